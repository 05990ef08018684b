"""The study's findings: importing this package imports every module in it, and each module registers its
findings (registry.register). A new finding is a new module here; nothing lists them a second time."""

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")
