"""Per-sample spectral norm of the input Jacobian of a network's logits, batched.

For a model f and a batch x = (x_1, ..., x_B), the logits f(x_i) are flattened to R^K and the input x_i to
R^d; J(x_i) is the K x d Jacobian and ||J(x_i)||_2 its largest singular value (the local Lipschitz constant
at x_i in the Euclidean norm). Any ||J(x_i)||_2 is a valid lower bound of the Lipschitz constant of f.

Two methods, both vectorised over the batch (no Python loop per sample):

* exact: K vector-Jacobian products (one backward per output coordinate, each for the whole batch) give
  the rows of every J(x_i); then the top eigenvalue of the min(K, d)-sized Gram matrix per sample
  (``torch.linalg.eigvalsh``, batched). Exact up to floating-point rounding. Cost ~ one forward + K
  backward passes, memory ~ B*K*d numbers.
* iterative: batched power iteration on J^T J with Jacobian-vector and vector-Jacobian products that never
  form J. Every iterate is ||J^T u|| for a unit vector u, which is <= ||J||_2: the estimate approaches the
  norm from below and so stays a valid lower bound at every iteration. Warm-startable.

Rounding at kinks: for ReLU / max-pool networks J is piecewise constant and jumps across kinks. A point
within rounding distance of a kink can land in the neighbouring linear region, so two correct float32
implementations (e.g. batched vs per-sample convolutions) may disagree there by far more than 1e-6
(seen: 3 % of random CIFAR-shaped points with CNN 20, by up to 1e-3); in float64 they agree to 1e-15.

Mixed precision: every function here runs its forward and backward passes in float32 with autocast
disabled on the CPU and CUDA (:func:`float32_measurement`), and casts float16 / bfloat16 inputs to
float32, so a measurement under ``torch.autocast`` gives the values of the float32 model with the same
weights (autocast keeps the weights in float32).

Call ``model.eval()`` first: BatchNorm in training mode couples the samples of a batch, so a BatchNorm or
Dropout layer in training mode raises ValueError. Parameter ``.grad`` is never touched: gradients are taken with respect to the input
only. The functions enable autograd themselves, so they work under ``torch.no_grad()``, but not under
``torch.inference_mode()`` (autograd cannot record there).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DEFAULT_MAX_EXACT_OUTPUTS = 64
METHODS = ("auto", "exact", "iterative")


@dataclass
class SingularTriplets:
    """Top singular value and vectors of J(x_i) per sample: J(x_i) v_i = sigma_i u_i.

    sigma: [B]; u: [B, K] unit vectors in logit space; v: [B, d] unit vectors in (flattened) input space.
    Where sigma_i == 0 the vectors are zero.
    """

    sigma: Tensor
    u: Tensor
    v: Tensor


@dataclass
class PowerIterationResult:
    """Result of :func:`power_iteration_spectral_norms`.

    norms: [B] lower estimates of ||J(x_i)||_2; vectors: [B, d] the current right singular vector
    estimates (pass them back as ``init`` to warm-start); left_vectors: [B, K] the matching unit vectors u
    with J^T u = norm * vector; iterations: how many were run; converged: whether every sample met the
    tolerance.
    """

    norms: Tensor
    vectors: Tensor
    left_vectors: Tensor
    iterations: int
    converged: bool


@contextmanager
def float32_measurement() -> Iterator[None]:
    """Disable autocast on the CPU and CUDA inside the block (re-enabled on exit), so that a Jacobian
    measurement taken during mixed-precision training runs in the parameters' own dtype (float32)."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def check_autograd_available() -> None:
    """Raise a clear RuntimeError under ``torch.inference_mode`` (where no Jacobian can be taken)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Jacobian norms need autograd, which torch.inference_mode disables; call this outside "
            "inference mode (in Lightning: Trainer(inference_mode=False) for validate/test)"
        )


def check_eval_mode(model: nn.Module) -> None:
    """Raise ValueError if a BatchNorm or Dropout submodule is in training mode, or a BatchNorm has no running
    statistics (it then normalises by the batch's statistics even in eval mode): per-sample Jacobians would be
    wrong, random or dependent on the batch."""
    if not isinstance(model, nn.Module):
        return
    stochastic = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    for name, module in model.named_modules():
        label = f"module {name or type(module).__name__!r} ({type(module).__name__})"
        if isinstance(module, stochastic) and module.training:
            raise ValueError(f"{label} is in training mode; call model.eval() before computing Lipschitz bounds")
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            raise ValueError(
                f"{label} has no running statistics (track_running_stats=False), so it normalises "
                "by batch statistics even in eval mode: per-sample Jacobians are not defined"
            )


def _input_leaf(x: Tensor) -> Tensor:
    """A fresh leaf copy of x that requires grad (works for inference tensors too)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a Tensor of inputs, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of inputs [B, ...], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"inputs must be floating point to differentiate, got dtype {x.dtype}")
    leaf = x.detach()
    if leaf.dtype in (torch.float16, torch.bfloat16):
        leaf = leaf.float()
    if leaf.is_inference():
        leaf = leaf.clone()
    return leaf.requires_grad_(True)


def _flat_logits(model, x: Tensor) -> Tensor:
    check_eval_mode(model)
    out = model(_to_parameter_dtype(model, x))
    if not isinstance(out, Tensor):
        raise ValueError(f"model must return a Tensor of logits, got {type(out).__name__}")
    if out.dim() < 1 or out.shape[0] != x.shape[0]:
        raise ValueError(f"model output shape {tuple(out.shape)} does not have batch size {x.shape[0]} first")
    return out.reshape(x.shape[0], -1)


def _to_parameter_dtype(model, x: Tensor) -> Tensor:
    """x cast (differentiably) to the dtype of a model whose weights are float16 / bfloat16 themselves
    (Lightning's "16-true" / "bf16-true" precision), which cannot take the float32 inputs used here."""
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            if parameter.dtype in (torch.float16, torch.bfloat16) and parameter.dtype != x.dtype:
                return x.to(parameter.dtype)
            break
    return x


def jacobian_rows(model, x: Tensor) -> Tensor:
    """Explicit per-sample Jacobians J(x_i) of the flattened logits w.r.t. the flattened input: [B, K, d].

    Exact. One forward and K backward passes, each for the whole batch (the loop runs over output
    coordinates, not samples); row k of every J(x_i) is the gradient of sum_i f_k(x_i), since sample i's
    logits depend on x_i only (true in eval mode).
    """
    check_autograd_available()
    with torch.enable_grad(), float32_measurement():
        leaf = _input_leaf(x)
        out = _flat_logits(model, leaf)
        batch, n_out = out.shape
        if not out.requires_grad:  # the logits do not depend on the input at all
            return torch.zeros(batch, n_out, leaf[0].numel(), dtype=leaf.dtype, device=leaf.device)
        rows = []
        cotangent = torch.zeros_like(out)
        for k in range(n_out):
            cotangent.zero_()
            cotangent[:, k] = 1.0
            (grad,) = torch.autograd.grad(
                out, leaf, cotangent, retain_graph=k < n_out - 1, allow_unused=True, materialize_grads=True
            )
            rows.append(grad.reshape(batch, -1))
    return torch.stack(rows, dim=1)


def top_singular_from_jacobians(jac: Tensor, *, vectors: bool = False) -> SingularTriplets:
    """Top singular value (and optionally vectors) of each matrix in a batch jac [B, K, d].

    Exact up to rounding: the largest eigenvalue of the Gram matrix J J^T (K x K) or J^T J (d x d),
    whichever is smaller, via batched ``eigvalsh``/``eigh``; sigma = sqrt(max(lambda_max, 0)).
    Without ``vectors`` the returned u and v are empty tensors.
    """
    batch, n_out, n_in = jac.shape
    wide = n_out <= n_in
    with float32_measurement():  # under autocast the matrix product would run in bfloat16 / float16
        jac = jac.float() if jac.dtype in (torch.float16, torch.bfloat16) else jac
        gram = jac @ jac.mT if wide else jac.mT @ jac
    if not vectors:
        top = torch.linalg.eigvalsh(gram)[:, -1]
        empty = jac.new_empty(batch, 0)
        return SingularTriplets(top.clamp_min(0).sqrt(), empty, empty)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    sigma = eigenvalues[:, -1].clamp_min(0).sqrt()
    top_vector = eigenvectors[:, :, -1]
    safe = sigma.clamp_min(torch.finfo(sigma.dtype).tiny)[:, None]
    nonzero = (sigma > 0)[:, None]
    if wide:
        u = top_vector * nonzero
        v = (jac.mT @ u[:, :, None])[:, :, 0] / safe
    else:
        v = top_vector * nonzero
        u = (jac @ v[:, :, None])[:, :, 0] / safe
    return SingularTriplets(sigma, u, v)


def _unit_rows(v: Tensor) -> Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def power_iteration_spectral_norms(
    model,
    x: Tensor,
    *,
    init: Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> PowerIterationResult:
    """Lower estimates of ||J(x_i)||_2 by batched power iteration on J^T J, never forming J.

    Each iteration does one Jacobian-vector product (double-backward trick through one retained graph)
    and one vector-Jacobian product for the whole batch: u = J v / ||J v||, w = J^T u, estimate = ||w||,
    v <- w / ||w||. Since u is a unit vector, ||J^T u|| <= ||J||_2: every estimate is a valid lower bound
    and increases towards the norm (error ~ (sigma_2/sigma_1)^(2t)). Stops when every sample's estimate
    changed by at most ``tol`` (relative) in one iteration, or after ``max_iter`` iterations.

    init: [B, d] (or x's shape) start vectors, e.g. the ``vectors`` of a previous call (warm start);
    rows that are zero or missing are drawn from N(0, I) with ``generator`` (a fresh one seeded 0 if None).
    """
    check_autograd_available()
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    with torch.enable_grad(), float32_measurement():
        leaf = _input_leaf(x)
        out = _flat_logits(model, leaf)
        batch, n_in = leaf.shape[0], leaf[0].numel()
        if not out.requires_grad:
            zeros = leaf.new_zeros(batch)
            return PowerIterationResult(zeros, leaf.new_zeros(batch, n_in), out.new_zeros(out.shape), 0, True)
        dummy = torch.zeros_like(out, requires_grad=True)
        (vjp_of_dummy,) = torch.autograd.grad(out, leaf, dummy, create_graph=True)  # J^T dummy, linear

        def jvp(v: Tensor) -> Tensor:  # J v  [B, K]
            (jv,) = torch.autograd.grad(vjp_of_dummy, dummy, v.view_as(leaf), retain_graph=True)
            return jv

        def vjp(u: Tensor) -> Tensor:  # J^T u  [B, d]
            (ju,) = torch.autograd.grad(out, leaf, u, retain_graph=True)
            return ju.reshape(batch, n_in)

        v = _start_vectors(init, batch, n_in, leaf, generator)
        estimate = leaf.new_zeros(batch)
        converged = False
        for iteration in range(1, max_iter + 1):
            u = _unit_rows(jvp(v))
            w = vjp(u)
            previous, estimate = estimate, w.norm(dim=1)
            v = torch.where(estimate[:, None] > 0, _unit_rows(w), v)
            if iteration > 1 and bool(((estimate - previous).abs() <= tol * estimate).all()):
                converged = True
                break
    return PowerIterationResult(estimate.detach(), v.detach(), u.detach(), iteration, converged)


def _start_vectors(init, batch, n_in, like: Tensor, generator) -> Tensor:
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0)
    random = torch.randn(batch, n_in, generator=generator, dtype=like.dtype, device=generator.device)
    random = random.to(like.device)
    if init is None:
        return _unit_rows(random)
    if init.numel() != batch * n_in:
        raise ValueError(
            f"init must hold {batch} x {n_in} numbers (one start vector per sample), got shape {tuple(init.shape)}"
        )
    init = init.detach().reshape(batch, n_in).to(like)
    usable = (init.norm(dim=1, keepdim=True) > 0) & torch.isfinite(init).all(dim=1, keepdim=True)
    return _unit_rows(torch.where(usable, init, random))


def _output_size(model, x: Tensor) -> int:
    with torch.no_grad():
        return _flat_logits(model, x[:1]).shape[1]


def top_singular_triplets(
    model, x: Tensor, *, method: str = "auto", max_exact_outputs: int = DEFAULT_MAX_EXACT_OUTPUTS, **power_kwargs
) -> SingularTriplets:
    """Top singular value and vectors of J(x_i) per sample (see :class:`SingularTriplets`).

    method "exact" (K VJPs + batched eigh; exact), "iterative" (power iteration, sigma a lower estimate,
    vectors approximate) or "auto" (exact when K <= max_exact_outputs). ``power_kwargs`` go to
    :func:`power_iteration_spectral_norms`.
    """
    _input_leaf(x)  # validates x before the method is chosen
    if _resolve_method(model, x, method, max_exact_outputs) == "exact":
        if power_kwargs:
            raise ValueError(f"options {sorted(power_kwargs)} only apply to method='iterative'")
        return top_singular_from_jacobians(jacobian_rows(model, x), vectors=True)
    result = power_iteration_spectral_norms(model, x, **power_kwargs)
    return SingularTriplets(result.norms, result.left_vectors, result.vectors)


def _resolve_method(model, x: Tensor, method: str, max_exact_outputs: int) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    return "exact" if _output_size(model, x) <= max_exact_outputs else "iterative"


def jacobian_spectral_norms(
    model,
    x: Tensor,
    *,
    method: str = "auto",
    max_exact_outputs: int = DEFAULT_MAX_EXACT_OUTPUTS,
    **power_kwargs,
) -> Tensor:
    """||J(x_i)||_2 per sample, [B]: spectral norm of the Jacobian of the flattened logits (R^K) w.r.t. the
    flattened input (R^d) at each point x_i of the batch x.

    method:
      "exact"     K batched VJPs + top Gram eigenvalue per sample; exact up to rounding.
      "iterative" batched power iteration (:func:`power_iteration_spectral_norms`, never forms J); errs
                  low, so the result is a valid lower bound at any iteration count. ``power_kwargs``
                  (init, max_iter, tol, generator) are passed on.
      "auto"      exact when K <= max_exact_outputs (default 64), else iterative.
    Each value is a valid lower bound of the model's Lipschitz constant (L2 norms).
    """
    check_autograd_available()
    _input_leaf(x)  # validates x before the method is chosen
    if _resolve_method(model, x, method, max_exact_outputs) == "exact":
        if power_kwargs:
            raise ValueError(f"options {sorted(power_kwargs)} only apply to method='iterative'")
        return top_singular_from_jacobians(jacobian_rows(model, x)).sigma.detach()
    return power_iteration_spectral_norms(model, x, **power_kwargs).norms
