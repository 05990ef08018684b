"""The repository stands on its own: no file cites documents that live outside it."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("shared/design", "shared/paper", "design.md", "paper.md")


def test_no_file_refers_to_documents_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if path.name == Path(__file__).name or not path.is_file() or path.suffix in {".png", ".pdf", ".npz"}:
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {word}" for word in OUTSIDE if word in text]
    assert not offenders, offenders
