"""Run `lipschitz-dd` with a fault injected at one point of a run's life (used by tests/test_fault_injection.py).

    python tests/fault_inject.py POINT SIGNAL NTH -- <lipschitz-dd arguments>

The process sends itself SIGNAL (KILL, TERM or INT) the NTH time it reaches POINT:

    train_start   LightningModule.on_train_start: the run folder exists, no epoch has run (start-up)
    train_step    LipschitzModule.training_step: mid-epoch (NTH counts batches over the whole run)
    measure       torch.autograd.grad: inside a Lipschitz measurement (training itself uses backward())
    checkpoint    torch.save: half of the checkpoint's bytes are on disk, the rest never comes
    replace:NAME  os.replace onto a file called NAME (results.json, metrics.csv, config.yaml): the temporary file
                  is complete and the rename has not happened

Nothing here is imported by the library: the patches live in this process only.
"""

from __future__ import annotations

import io
import os
import signal
import sys

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


def install(point: str, signame: str, nth: int) -> None:
    """Patch the function behind `point` so that its `nth` call sends `signame` to this process."""
    sig = SIGNALS[signame]
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == nth

    def fire() -> None:
        os.kill(os.getpid(), sig)  # KILL ends here; TERM and INT are delivered at the next bytecode

    if point == "train_start":
        from lipschitz_dd.models.base import LipschitzModule

        original = LipschitzModule.on_train_start

        def on_train_start(self):
            original(self)
            if due():
                fire()

        LipschitzModule.on_train_start = on_train_start
    elif point == "train_step":
        from lipschitz_dd.models.base import LipschitzModule

        original_step = LipschitzModule.training_step

        def training_step(self, batch, batch_idx):
            if due():
                fire()
            return original_step(self, batch, batch_idx)

        LipschitzModule.training_step = training_step
    elif point == "measure":
        import torch

        original_grad = torch.autograd.grad

        def grad(*args, **kwargs):
            if due():
                fire()
            return original_grad(*args, **kwargs)

        torch.autograd.grad = grad
    elif point == "checkpoint":
        import torch

        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not due():
                return original_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            original_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(data)
                f.flush()
            else:
                with open(f, "wb") as out:
                    out.write(data)
            fire()  # the rest of the file never comes

        torch.save = save
    elif point.startswith("replace:"):
        name = point.split(":", 1)[1]
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if os.path.basename(os.fspath(dst)) == name and due():
                fire()
            return original_replace(src, dst, *args, **kwargs)

        os.replace = replace
    else:
        raise SystemExit(f"unknown fault point {point!r}")


def main(argv: list[str]) -> int:
    point, signame, nth, sep, *rest = argv
    assert sep == "--", "usage: fault_inject.py POINT SIGNAL NTH -- ARGS"
    install(point, signame, int(nth))
    from lipschitz_dd.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
