"""The config and sweep files that ship with lipschitz_dd, found by name from any directory.

The repository keeps them in its top-level `configs/` and `sweeps/` folders; a wheel installs those folders as
`lipschitz_dd/configs/` and `lipschitz_dd/sweeps/` (setup.cfg's package_dir). An editable install or a source
checkout reads them where they are, beside the package folder. Plain Python: importable from any layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Kind = Literal["configs", "sweeps"]

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: Kind) -> Path:
    """The folder holding the shipped `kind` files: inside the installed package, else the checkout's own."""
    for folder in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    raise FileNotFoundError(f"lipschitz_dd's shipped {kind} are missing (looked in {_PACKAGE / kind})")


def shipped_files(kind: Kind) -> dict[str, Path]:
    """{name: path} of every shipped `kind` file, the name being the file's stem (e.g. "fcn_mnist1d_dd")."""
    return {path.stem: path for path in sorted(shipped_dir(kind).glob("*.yaml"))}


def resolve(name_or_path: str | Path, kind: Kind) -> Path:
    """An existing file path as given, else the shipped file of that name (with or without ".yaml").

    Raises FileNotFoundError with the shipped names when neither exists.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    files = shipped_files(kind)
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent in (Path("."), Path(kind)) and stem in files:
        return files[stem]
    raise FileNotFoundError(
        f"{name_or_path}: no such file, and no shipped {kind[:-1]} of that name (shipped: {', '.join(files)})"
    )
