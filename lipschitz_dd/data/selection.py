"""Seeded, nested choices of training samples: the training subset and the label-noise set.

Everything here depends only on a data seed (never on the global RNG or the training seed), so a subset or a
noisy-label set is identical for every training seed and every model width.
"""

import zlib
from typing import Literal, get_args

import torch

NoiseMode = Literal["shuffle", "random", "random_wrong"]
NOISE_MODES: tuple[str, ...] = get_args(NoiseMode)


def seeded_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU torch.Generator for one `purpose` ("subset", "noise", "split", ...) under one data seed.

    Different purposes get unrelated streams (the seed is mixed with a CRC32 of the purpose), so choosing a
    subset does not change which labels are corrupted, and vice versa.
    """
    mixed = zlib.crc32(f"{purpose}:{int(seed)}".encode())
    return torch.Generator().manual_seed(mixed)


def nested_subset_indices(num_available: int, size: int, seed: int) -> torch.Tensor:
    """Indices (sorted, int64) of a fixed random subset of `size` out of `num_available` samples.

    The subset is the first `size` entries of one permutation drawn from `seed`, so for a fixed seed a smaller
    subset is contained in a larger one. Raises ValueError if `size` is not in [1, num_available].
    """
    if not 1 <= size <= num_available:
        raise ValueError(
            f"train_subset={size} is invalid: it must be between 1 and the {num_available} training samples available"
        )
    order = torch.randperm(num_available, generator=seeded_generator(seed, "subset"))
    return order[:size].sort().values


def check_label_noise(alpha: float, mode: str) -> None:
    """Raise a one-line ValueError unless 0 <= alpha <= 1 and mode is one of NOISE_MODES."""
    if not 0.0 <= float(alpha) <= 1.0:  # also rejects NaN
        raise ValueError(f"label_noise={alpha} is invalid: the fraction of noisy labels must lie in [0, 1]")
    if mode not in NOISE_MODES:
        raise ValueError(f"noise_mode={mode!r} is unknown: choose one of {', '.join(NOISE_MODES)}")


def corrupt_labels(
    labels: torch.Tensor, alpha: float, num_classes: int, mode: NoiseMode = "shuffle", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a fraction `alpha` of integer class labels; returns (noisy_labels, noisy_mask).

    The noisy set (`noisy_mask`, bool) is the first round(alpha * n) positions of a permutation drawn from
    `seed`, so for a fixed seed the set for a smaller alpha is contained in the set for a larger alpha.
    Inside the noisy set:
      - "shuffle" (the paper): the selected labels are permuted among themselves by a fixed permutation; the
        class histogram is unchanged, and a label stays the same when it lands on an equal label, so the
        fraction of changed labels is about alpha * (1 - sum_k p_k^2) for class frequencies p_k.
      - "random" (MNIST-1D authors): each selected label becomes a uniformly random class (it may stay the
        same), so about alpha * (1 - 1/K) of all labels change.
      - "random_wrong" (Nakkiran et al.): each selected label becomes a uniformly random *other* class, so
        exactly round(alpha * n) labels change.
    In "random" and "random_wrong" each position's replacement is drawn once for all positions, so a sample
    gets the same noisy label for every alpha whose noisy set contains it. The result depends only on
    (labels, alpha, num_classes, mode, seed). The input is not modified.
    """
    check_label_noise(alpha, mode)
    if num_classes < 2 and alpha > 0:
        raise ValueError(f"num_classes={num_classes} is invalid: label noise needs at least 2 classes")
    labels = torch.as_tensor(labels)
    n = labels.shape[0]
    generator = seeded_generator(seed, "noise")
    selected = torch.randperm(n, generator=generator)[: round(float(alpha) * n)]
    noisy_mask = torch.zeros(n, dtype=torch.bool)
    noisy_mask[selected] = True
    noisy = labels.clone()
    if mode == "shuffle":
        noisy[selected] = labels[selected[torch.randperm(len(selected), generator=generator)]]
    elif mode == "random":
        replacement = torch.randint(num_classes, (n,), generator=generator, dtype=labels.dtype)
        noisy[noisy_mask] = replacement[noisy_mask]
    else:  # random_wrong: a shift by 1..K-1 (mod K) is a uniformly random other class
        shift = torch.randint(1, num_classes, (n,), generator=generator, dtype=labels.dtype)
        noisy[noisy_mask] = (labels[noisy_mask] + shift[noisy_mask]) % num_classes
    return noisy, noisy_mask
