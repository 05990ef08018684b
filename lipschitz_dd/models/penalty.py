"""C_lower as a regulariser: a differentiable max over a batch of the input-Jacobian spectral norm.

For logits f(x) in R^K and the input Jacobian J(x) (K x d), ``||J(x)||_2 = sigma_1 = u^T J(x) v`` for the top
singular pair (u, v). With (u, v) held fixed, ``d sigma_1 = u^T (dJ) v`` wherever sigma_1 is simple (the
derivative of a simple singular value), so ``s(theta) = u^T J_theta(x) v`` has the gradient of ||J(x)||_2 with
respect to the parameters at the current point. ``u^T J v`` is computed as ``<v, grad_x <u, f(x)>>`` with a
graph kept for the second differentiation (double backward), never forming J.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lipschitz_dd.bounds.jacobian import top_singular_triplets


def jacobian_norm_penalty(model: Callable[[Tensor], Tensor], x: Tensor, **method_options) -> tuple[Tensor, Tensor]:
    """``(max_b ||J(x_b)||_2, logits)``: the largest per-sample spectral norm of the input Jacobian of
    ``model`` over the batch ``x``, differentiable in the model's parameters, and the logits ``model(x)``
    from the same forward pass (so a loss can reuse them).

    The singular vectors come from ``lipschitz_dd.bounds.jacobian.top_singular_triplets`` (exact for few logits, else
    power iteration, whose value errs low) and are treated as constants; the returned value is
    ``u_b^T J(x_b) v_b`` at the arg-max sample b, whose parameter gradient is ``u_b^T (dJ(x_b)) v_b``.
    ``method_options`` go to top_singular_triplets.
    """
    triplets = top_singular_triplets(model, x.detach(), **method_options)
    u, v = triplets.u.detach(), triplets.v.detach()
    inputs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
        flat = logits.flatten(1)
        (jt_u,) = torch.autograd.grad((flat * u.to(flat.dtype)).sum(), inputs, create_graph=True)
        sigma = (jt_u.flatten(1) * v.to(jt_u.dtype)).sum(dim=1)
    return sigma.max(), logits
