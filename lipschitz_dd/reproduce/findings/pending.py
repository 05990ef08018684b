"""Findings that need a feature lipschitz_dd does not have yet: listed, and refused with one line when run.

When the feature lands, move the finding to a module of its own with a sweep and an analysis (see registry.py).
"""

from __future__ import annotations

from lipschitz_dd.reproduce.registry import Finding, register

_PENDING = [
    (
        "cnn_double_descent",
        "Finding 2 (CNN on CIFAR-10 / CIFAR-100 coarse / MNIST with 10 % noise, ViT on CIFAR-10)",
        "The Lipschitz double descent also shows for CNNs (widths 5..60) and ViTs over width.",
        "CIFAR-10/100 on disk (no network here) and the CNN sweep's quick/cpu scales (full scale: "
        "sweeps/cnn_cifar10_width_noise.yaml)",
    ),
]

_NUMBERS = {
    "cnn_double_descent": "2.1",
}

for _name, _section, _claim, _needs in _PENDING:
    register(Finding(name=_name, section=_section, number=_NUMBERS[_name], claim=_claim, needs=_needs))
