"""Build the API reference (HTML, from the docstrings) with pdoc and fail on any module that does not load.

    python tools/build_api_docs.py [OUT]        # default OUT: docs/api (open docs/api/index.html)

pdoc imports every module of lipschitz_dd (callbacks included, as lipschitz_dd.callbacks) and reports a module
that fails to import as a warning and leaves it out; here every such warning is an error, so a broken reference
fails the build (tests/test_api_docs.py runs this in CI).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: None: lipschitz_dd, each of its public submodules and lipschitz_dd.callbacks (see `modules`)
MODULES: tuple[str, ...] | None = None


def modules() -> tuple[str, ...]:
    """What to document. lipschitz_dd's `__all__` lists its public names, and pdoc then walks only those, so
    every public submodule is named here; callbacks/ is installed as lipschitz_dd.callbacks (a package_dir
    mapping that pkgutil does not walk)."""
    if MODULES is not None:
        return MODULES
    import pkgutil

    import lipschitz_dd

    subs = sorted(f"lipschitz_dd.{m.name}" for m in pkgutil.iter_modules(lipschitz_dd.__path__) if m.name[0] != "_")
    return ("lipschitz_dd", *subs, "lipschitz_dd.callbacks")


def build(out: Path) -> list[str]:
    """Write the reference into `out`; return the problems pdoc reported (empty: every module documented)."""
    os.environ.setdefault("PDOC_ALLOW_EXEC", "1")  # torch probes the CPU with a subprocess at import
    os.environ.setdefault("WANDB_MODE", "disabled")
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="markdown", footer_text="lipschitz_dd API reference", search=True)
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pdoc.pdoc(*modules(), output_directory=out)
        except (RuntimeError, ValueError) as error:  # a module that does not import; a spec matching nothing
            problems.append(str(error))
    problems += [str(w.message).splitlines()[0] for w in caught if w.filename and "pdoc" in w.filename]
    for module in modules():
        page = out.joinpath(*module.split(".")).with_suffix(".html")
        if not page.is_file():
            problems.append(f"no page for {module} ({page})")
    return problems


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "docs" / "api"
    problems = build(out)
    for problem in problems:
        print(f"api docs: {problem}", file=sys.stderr)
    if not problems:
        print(f"API reference: {out / 'index.html'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
