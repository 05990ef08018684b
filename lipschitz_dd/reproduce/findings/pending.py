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
    (
        "pairwise",
        "C_lower vs pairwise C_alt (Table 3)",
        "The pairwise bound max ||f(x)-f(y)||/||x-y|| over training pairs stays below C_lower at every checkpoint.",
        "the pairwise bound (bounds.pairwise_lipschitz) as an option of the Lipschitz callback",
    ),
    (
        "out_of_distribution",
        "Out-of-distribution points",
        "C_lower over training points plus Gaussian noise (times the data radius) barely changes; the test loss on "
        "noisy test points rises.",
        "the test loss on noisy test points (the callback's lipschitz/lower_noise exists)",
    ),
    (
        "adversarial",
        "Adversarial points (Table 6)",
        "C_lower over PGD points (L2, eps 0.5) moves by at most ~5 %; the finite-difference ratio at PGD points stays "
        "below C_lower.",
        "CIFAR-10 on disk and the finite-difference ratio (bounds.finite_difference_ratio) in the callback",
    ),
    (
        "dropout_weight_decay",
        "Dropout and weight decay (CIFAR ResNet-20)",
        "C_lower falls with dropout p and with weight decay; misclassified points have larger norms more often, "
        "loss and norm barely correlate (~0.03).",
        "an analysis entry for the ResNet-20 dropout / weight-decay sweeps (sweeps/resnet20_fashion_mnist_dropout.yaml, _weight_decay.yaml); bounds.correctness_split exists",
    ),
    (
        "imagenet",
        "Large scale: ResNet-50 / SimpleViT on ImageNet",
        "The product bound is ~1e27 at init, ~40 orders above C_lower; sub-sampling error 21 %..6 %; hard convex "
        "combinations shift the norm distribution by < 2x.",
        "ImageNet on disk and a GPU (configs resnet50_imagenet, simplevit_imagenet and sweeps/imagenet_seeds.yaml exist)",
    ),
]

_NUMBERS = {
    "pairwise": "1.3",
    "cnn_double_descent": "2.1",
    "dropout_weight_decay": "5.6",
    "out_of_distribution": "6.2",
    "adversarial": "6.3",
    "imagenet": "8",
}

for _name, _section, _claim, _needs in _PENDING:
    register(Finding(name=_name, section=_section, number=_NUMBERS[_name], claim=_claim, needs=_needs))
