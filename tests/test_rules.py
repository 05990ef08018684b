"""The rule tables: every activation is declared once, its module and functional forms get the same constant,
and that constant matches an independent numerical estimate (the max slope on a fine grid, or Jacobians)."""

import pytest
import torch
from torch import nn

from lipschitz_dd.bounds import rules
from lipschitz_dd.bounds.upper import upper_bound

GRID = torch.linspace(-20, 20, 2_000_001, dtype=torch.float64)  # spacing 2e-5, holds 0 and the kinks at +-3
# Non-default arguments of the activations whose constant depends on them (module attribute = function argument)
ARGUMENTS = {
    "leaky_relu": {"negative_slope": -3.0},
    "elu": {"alpha": 2.0},
    "rrelu": {"lower": 0.1, "upper": 3.0},
    "gelu": {"approximate": "tanh"},
}
NOT_ELEMENTWISE = {"softmax", "softmin"}
RANDOM_IN_TRAINING = {"rrelu"}  # the constant covers every slope training may draw, more than eval mode uses
CASES = [(a, {}) for a in rules.ACTIVATIONS] + [
    (a, ARGUMENTS[a.name]) for a in rules.ACTIVATIONS if a.name in ARGUMENTS
]


class Call(nn.Module):
    """forward(x) = function(x, *args, **kwargs)."""

    def __init__(self, function, *args, **kwargs):
        super().__init__()
        self.function, self.args, self.kwargs = function, args, kwargs

    def forward(self, x):
        return self.function(x, *self.args, **self.kwargs)


def _id(case):
    activation, arguments = case
    return activation.name + "".join(f"-{k}={v}" for k, v in arguments.items())


def test_every_module_class_and_function_name_is_declared_once():
    activation_names = [a.name for a in rules.ACTIVATIONS]
    one_lipschitz, not_lipschitz = (
        list(rules.ONE_LIPSCHITZ),
        [n for names, _ in rules.NOT_LIPSCHITZ.values() for n in names],
    )
    names = activation_names + one_lipschitz + not_lipschitz + [function for function, _ in rules.POOLS.values()]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    classes = [cls for a in rules.ACTIVATIONS for cls in a.modules]
    classes += [cls for modules in rules.ONE_LIPSCHITZ.values() for cls in modules]
    classes += [cls for _, modules in rules.NOT_LIPSCHITZ.values() for cls in modules] + list(rules.POOLS)
    assert len(classes) == len(set(classes)), sorted({c.__name__ for c in classes if classes.count(c) > 1})


@pytest.mark.parametrize("activation", rules.ACTIVATIONS, ids=lambda a: a.name)
def test_constant_arguments_are_arguments_of_both_forms(activation):
    """A constant that depends on an argument reads it by the same name from the function and the module."""
    for param in activation.params:
        assert param in activation.arguments or not activation.arguments, (param, activation.arguments)
        for cls in activation.modules:
            assert hasattr(cls(), param), (cls.__name__, param)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_module_and_functional_forms_agree_with_the_max_slope(case):
    activation, arguments = case
    shape = (1, 3, 4, 4) if nn.Softmax2d in activation.modules else (1, 6)
    extra = {"dim": -1} if activation.name in NOT_ELEMENTWISE else {}
    function_form = upper_bound(Call(activation.function, **arguments, **extra), torch.randn(shape))
    assert function_form.available, function_form.reason
    assert [layer.op for layer in function_form.layers] == [activation.name]
    constant = function_form.value
    for cls in activation.modules:
        module = cls(**arguments, **extra) if cls is not nn.Softmax2d else cls()
        module_form = upper_bound(nn.Sequential(module), torch.randn(shape))
        assert module_form.value == constant, cls.__name__
        assert upper_bound(module, torch.randn(shape)).value == constant, cls.__name__  # the hook path
    if activation.name == "leaky_relu":  # arguments by position read alike
        assert upper_bound(Call(activation.function, *arguments.values()), torch.randn(shape)).value == constant
    if activation.name in NOT_ELEMENTWISE:
        return  # test_softmax_constant_is_the_sup_of_its_jacobian_norms
    x = GRID.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad(activation.function(x, **arguments).sum(), x)
    max_slope = slope.abs().max().item()
    assert constant >= max_slope * (1 - 1e-7)  # torch's hardsigmoid backward uses 1/6 rounded to float32
    if activation.name not in RANDOM_IN_TRAINING:
        assert constant == pytest.approx(max_slope, rel=1e-4)


@pytest.mark.parametrize("name", sorted(NOT_ELEMENTWISE))
def test_softmax_constant_is_the_sup_of_its_jacobian_norms(name):
    activation = next(a for a in rules.ACTIVATIONS if a.name == name)
    gen = torch.Generator().manual_seed(0)
    points = [torch.randn(5, dtype=torch.float64, generator=gen) * 3 for _ in range(50)]
    points.append(torch.tensor([0.0, 0.0, 50.0 if name == "softmin" else -50.0], dtype=torch.float64))
    norms = [
        torch.linalg.matrix_norm(torch.autograd.functional.jacobian(lambda z: activation.function(z, -1), p), 2).item()
        for p in points
    ]
    constant = rules.module_rule(activation.modules[0](-1), (5,), (5,)).value
    assert max(norms) <= constant and max(norms) == pytest.approx(constant, rel=1e-9)
