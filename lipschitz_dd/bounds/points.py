"""Point sets on which to evaluate ||J(x)||_2 (any point gives a valid lower bound).

Convex combinations of data pairs (streamed in chunks), Gaussian and PGD perturbations of data, and a
dense 2-D grid. Randomness comes from the caller's torch.Generator (a fresh one seeded 0 when None, so
the same call gives the same points), never from the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lipschitz_dd.bounds.jacobian import check_autograd_available, check_eval_mode

DEFAULT_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.5)
DataBox = tuple[float | Tensor, float | Tensor]


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(0) if generator is None else generator


def _check_batch(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty Tensor [N, ...], got {shape}")


def convex_combinations(
    x: Tensor,
    n_points: int,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    generator: torch.Generator | None = None,
    chunk_size: int = 4096,
) -> Iterator[Tensor]:
    """Iterator over n_points points lam * x_i + (1 - lam) * x_j, in chunks of at most chunk_size.

    For each point a pair i != j is drawn uniformly from the rows of x (with replacement across points)
    and lam uniformly from ``lambdas``; draws use ``generator`` (on the CPU) chunk by chunk, so only one
    chunk exists in memory at a time and a seeded generator gives the same points. Chunks live on
    x's device and dtype. Needs at least 2 rows in x.
    """
    _check_batch(x)
    if x.shape[0] < 2:
        raise ValueError(f"convex combinations need at least 2 points, got {x.shape[0]}")
    if not isinstance(n_points, int) or n_points < 0:
        raise ValueError(f"n_points must be a non-negative int, got {n_points!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    lambda_values = torch.as_tensor(list(lambdas), dtype=torch.float64)
    if lambda_values.numel() == 0 or not bool(((lambda_values >= 0) & (lambda_values <= 1)).all()):
        raise ValueError(f"lambdas must be a non-empty list of numbers in [0, 1], got {list(lambdas)}")
    return _convex_chunks(x, n_points, lambda_values, _generator(generator), chunk_size)


def _convex_chunks(x, n_points, lambda_values, generator, chunk_size) -> Iterator[Tensor]:
    n = x.shape[0]
    for start in range(0, n_points, chunk_size):
        size = min(chunk_size, n_points - start)
        first = torch.randint(n, (size,), generator=generator)
        second = (first + torch.randint(1, n, (size,), generator=generator)) % n  # uniform over j != i
        lam = lambda_values[torch.randint(len(lambda_values), (size,), generator=generator)]
        lam = lam.to(dtype=x.dtype, device=x.device).reshape(size, *([1] * (x.dim() - 1)))
        first, second = first.to(x.device), second.to(x.device)
        yield lam * x[first] + (1 - lam) * x[second]


def project_to_box(z: Tensor, data_box: DataBox | None) -> Tensor:
    """Clip z elementwise to the data box [low, high] (scalars or tensors broadcastable to z); None: z."""
    if data_box is None:
        return z
    low, high = (torch.as_tensor(bound, dtype=z.dtype, device=z.device) for bound in data_box)
    if bool((low > high).any()):
        raise ValueError(f"data_box must be (low, high) with low <= high, got {data_box}")
    return torch.minimum(torch.maximum(z, low), high)


def gaussian_perturbations(
    x: Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
    data_box: DataBox | None = None,
) -> Tensor:
    """x + sigma * N(0, I) (noise drawn with ``generator`` on its device), optionally clipped to the
    data box [low, high] (scalars or tensors broadcastable to one input)."""
    _check_batch(x)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    generator = _generator(generator)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return project_to_box(x + sigma * noise, data_box)


def _flat_norms(z: Tensor) -> Tensor:
    return z.reshape(z.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (z.dim() - 1)))


def pgd_perturbations(
    model,
    x: Tensor,
    y: Tensor,
    eps: float = 0.5,
    steps: int = 10,
    step_size: float | None = None,
    data_box: DataBox | None = None,
) -> Tensor:
    """Points x' in the L2 ball ||x' - x||_2 <= eps (and in the data box when given) that maximise the
    cross-entropy loss CE(f(x'), y), by projected gradient ascent from x' = x.

    Each step moves every sample by step_size (default 2.5 * eps / steps) along its normalised loss
    gradient, projects onto the ball (radial scaling) and then onto the box (clipping, which for x inside
    the box keeps x' inside the ball). Returns, per sample, the iterate with the largest loss seen
    (including x itself), so the loss never decreases. Parameter gradients are not touched; the model
    should be in eval mode.
    """
    check_autograd_available()
    check_eval_mode(model)
    _check_batch(x)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if eps < 0 or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"need eps >= 0 and an int steps >= 0, got eps={eps}, steps={steps}")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    x = x.detach().clone() if x.is_inference() else x.detach()
    best = x.clone()
    with torch.enable_grad():
        best_loss = _per_sample_loss(model, x, y).detach()
        current = x.clone()
        for _ in range(steps):
            current.requires_grad_(True)
            loss = _per_sample_loss(model, current, y)
            (grad,) = torch.autograd.grad(loss.sum(), current)
            with torch.no_grad():
                improved = loss > best_loss
                best = torch.where(_expand(improved, x), current, best)
                best_loss = torch.where(improved, loss, best_loss)
                step = grad / _flat_norms(grad).clamp_min(torch.finfo(grad.dtype).tiny)
                delta = current + step_size * step - x
                delta = delta * (eps / _flat_norms(delta).clamp_min(eps)).clamp(max=1.0)
                current = project_to_box(x + delta, data_box)
        final_loss = _per_sample_loss(model, current, y).detach()
    improved = final_loss > best_loss
    return torch.where(_expand(improved, x), current.detach(), best)


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def _per_sample_loss(model, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(x.shape[0], -1), y, reduction="none")


def grid_2d(
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    resolution: int | tuple[int, int] = 1000,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """All points of a regular grid on [x0, x1] x [y0, y1] (end points included), as a [nx * ny, 2]
    tensor, row-major in x then y. For 2-D toy inputs (1000 x 1000 = 8 MB in float32)."""
    nx, ny = (resolution, resolution) if isinstance(resolution, int) else resolution
    if nx < 1 or ny < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    xs = torch.linspace(x_range[0], x_range[1], nx, dtype=dtype)
    ys = torch.linspace(y_range[0], y_range[1], ny, dtype=dtype)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
