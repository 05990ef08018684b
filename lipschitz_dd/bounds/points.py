"""Point sets on which to evaluate ||J(x)||_2 (any point gives a valid lower bound).

Convex combinations of data pairs (streamed in chunks), Gaussian and PGD perturbations of data, and a
dense 2-D grid. Randomness comes from the caller's torch.Generator (a fresh one seeded 0 when None, so
the same call gives the same points), never from the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import MappingProxyType

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


STUDY_PGD = MappingProxyType({"steps": 1000, "step_size": 10.0, "decay": 0.95, "start_noise": 1e-4})
"""The study's PGD schedule (Khromov & Singh, adversarial points): 1,000 ascent steps on the CE loss of the logits,
step size 10 decayed x0.95 after every step, a Gaussian start of standard deviation 1e-4 around each point;
pass it as `pgd_perturbations(..., **STUDY_PGD)` with the ball's eps and the data box."""


def pgd_perturbations(
    model,
    x: Tensor,
    y: Tensor,
    eps: float = 0.5,
    steps: int = 10,
    step_size: float | None = None,
    data_box: DataBox | None = None,
    decay: float = 1.0,
    start_noise: float = 0.0,
    generator: torch.Generator | None = None,
    tol: float = 0.0,
) -> Tensor:
    """Points x' in the L2 ball ||x' - x||_2 <= eps (and in the data box when given) that maximise the
    cross-entropy loss CE(f(x'), y), by projected gradient ascent (L2 norm of the flattened sample).

    Start: x' = x + start_noise * N(0, I) (drawn with `generator`; none when start_noise is 0), projected.
    Step t = 0 .. steps-1 moves every sample by step_size * decay**t along its normalised loss gradient
    (default step_size 2.5 * eps / steps, decay 1: the earlier fixed schedule), then projects x' - x exactly
    onto the intersection of the ball and the box shifted by x (`project_ball_and_box`; without a box the
    radial scaling onto the ball). The study's schedule is `**STUDY_PGD` (1,000 steps, step size 10 decayed
    x0.95, start noise 1e-4). `tol` > 0 stops the ascent once the steps left could move a point by at most
    `tol` in all (the sum of their sizes; projections do not expand distances): the last iterate then lies within
    `tol` of the full schedule's (tol 0: every step runs). x itself must lie in the data box (ValueError otherwise: the ball and the box
    might not meet). Returns, per sample, the iterate with the largest loss seen (the start included), so the
    result is never worse than the start. Finding a loss maximiser is a heuristic (the loss is not concave):
    the points are valid inputs, so ||J|| there gives valid lower bounds; they need not be the worst case.
    Parameter gradients are not touched; the model should be in eval mode.
    """
    check_autograd_available()
    check_eval_mode(model)
    _check_batch(x)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if eps < 0 or isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"need eps >= 0 and an int steps >= 0, got eps={eps}, steps={steps}")
    if not (0 < decay <= 1) or start_noise < 0 or (step_size is not None and step_size < 0) or tol < 0:
        raise ValueError(
            f"need 0 < decay <= 1, start_noise >= 0, step_size >= 0, tol >= 0; got decay={decay}, "
            f"start_noise={start_noise}, step_size={step_size}, tol={tol}"
        )
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    x = x.detach().clone() if x.is_inference() else x.detach()
    low, high = _box_offsets(x, data_box)
    if eps == 0:
        return x.clone()
    current = x
    if start_noise > 0:
        generator = _generator(generator)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
        current = x + project_ball_and_box(start_noise * noise, eps, low, high)
    best = current.clone()
    alpha = float(step_size)
    with torch.enable_grad():
        best_loss = _per_sample_loss(model, current, y).detach()
        for t in range(steps):
            left = alpha * (steps - t) if decay == 1 else alpha * (1 - decay ** (steps - t)) / (1 - decay)
            if left <= tol:
                break
            current = current.detach().requires_grad_(True)
            loss = _per_sample_loss(model, current, y)
            (grad,) = torch.autograd.grad(loss.sum(), current)
            with torch.no_grad():
                improved = loss > best_loss
                best = torch.where(_expand(improved, x), current, best)
                best_loss = torch.where(improved, loss, best_loss)
                step = grad / _flat_norms(grad).clamp_min(torch.finfo(grad.dtype).tiny)
                current = x + project_ball_and_box(current + alpha * step - x, eps, low, high)
            alpha *= decay
        final_loss = _per_sample_loss(model, current, y).detach()
    improved = final_loss > best_loss
    return torch.where(_expand(improved, x), current.detach(), best)


def _box_offsets(x: Tensor, data_box: DataBox | None) -> tuple[Tensor | None, Tensor | None]:
    """(low - x, high - x) of the data box, the bounds on a perturbation of x; (None, None) without a box.
    ValueError (one line) when the box is empty or x does not lie in it."""
    if data_box is None:
        return None, None
    low, high = (torch.as_tensor(bound, dtype=x.dtype, device=x.device) for bound in data_box)
    if bool((low > high).any()):
        raise ValueError(f"data_box must be (low, high) with low <= high, got {data_box}")
    if bool((x < low).any() or (x > high).any()):
        raise ValueError(
            f"the points lie outside data_box {tuple(float(b) if b.dim() == 0 else 'tensor' for b in (low, high))} "
            f"(values {float(x.min()):.4g}..{float(x.max()):.4g}): give the box the data live in, or none"
        )
    return (low - x), (high - x)


def project_ball_and_box(
    delta: Tensor, eps: float, low: Tensor | None = None, high: Tensor | None = None, iterations: int = 40
) -> Tensor:
    """The Euclidean projection of every row of `delta` [N, ...] onto {d : ||d||_2 <= eps, low <= d <= high}
    (L2 norm of the flattened row; `low`, `high` broadcastable to delta with low <= 0 <= high, so d = 0 is
    feasible; None: no bound on that side).

    By the KKT conditions the projection is d(t) = clip(t * delta, low, high) with the largest t in [0, 1] such
    that ||d(t)|| <= eps (t = 1 when clip(delta) already lies in the ball; ||d(t)|| does not decrease in t).
    t is found per row by `iterations` bisection steps, keeping the feasible end: the result always satisfies
    both constraints (up to float rounding of the norm) and is within 2^-iterations (relative, in t) of the
    exact projection. Without a box this is the radial scaling delta * min(1, eps / ||delta||)."""
    if low is None and high is None:
        return delta * (eps / _flat_norms(delta).clamp_min(eps)).clamp(max=1.0)

    ones = torch.ones(delta.shape[0], *([1] * (delta.dim() - 1)), dtype=delta.dtype, device=delta.device)
    full = torch.clamp(delta * ones, low, high)
    outside = (_flat_norms(full) > eps).reshape(-1)
    if not bool(outside.any()):
        return full
    rows = delta[outside]
    sub_low = None if low is None else low.expand_as(delta)[outside]
    sub_high = None if high is None else high.expand_as(delta)[outside]
    lo_t, hi_t = torch.zeros_like(ones[outside]), torch.ones_like(ones[outside])

    for _ in range(iterations):
        middle = (lo_t + hi_t) / 2
        inside = _flat_norms(torch.clamp(rows * middle, sub_low, sub_high)) <= eps
        lo_t = torch.where(inside, middle, lo_t)
        hi_t = torch.where(inside, hi_t, middle)
    projected = torch.clamp(rows * lo_t, sub_low, sub_high)
    # rounding: the feasible end's norm may exceed eps by an ulp; scale it in radially (stays in the box: 0 is in it)
    projected = projected * (eps / _flat_norms(projected).clamp_min(eps)).clamp(max=1.0)
    full[outside] = projected
    return full


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
