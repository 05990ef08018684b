"""Everything is configured in setup.cfg; this file only completes its package list.

setup.cfg finds lipschitz_dd's subpackages (`packages = find:`) and maps callbacks/, configs/ and sweeps/ into the
package (`package_dir`). `find:` looks only below the project root for folders named like packages, so it cannot
see a mapped folder: each one, and every subpackage found in it, is added here (named from the mapping, never
listed by hand).
"""

from setuptools import find_packages, setup
from setuptools.dist import Distribution


def mapped_packages(package_dir: dict[str, str]) -> list[str]:
    """Each package that package_dir maps to a folder ("lipschitz_dd.callbacks" -> callbacks/), and the folder's
    subpackages (folders with an __init__.py below it), under the mapped name."""
    packages = []
    for name, folder in package_dir.items():
        if name:
            packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]
    return packages


class MappedFoldersDistribution(Distribution):
    def parse_config_files(self, *args, **kwargs):
        super().parse_config_files(*args, **kwargs)
        self.packages = sorted({*(self.packages or []), *mapped_packages(self.package_dir or {})})


setup(distclass=MappedFoldersDistribution)
