"""The curated public face: `lipschitz_dd` exports the callback, the meter, the point sets and the main bounds
lazily (importing it loads neither torch nor Lightning), and `lipschitz_dd.bounds.__all__` holds only the public
functions and result types."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lipschitz_dd
import lipschitz_dd.bounds as bounds


@pytest.mark.e2e
def test_import_lipschitz_dd_is_cheap_and_the_meter_needs_no_lightning():
    code = (
        "import sys, lipschitz_dd\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'eager import'\n"
        "from lipschitz_dd import LipschitzMeter, lower_bound\n"
        "assert 'lightning' not in sys.modules, 'the meter imported Lightning'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves_to_its_home():
    from lipschitz_dd.bounds import lower_bound
    from lipschitz_dd.callbacks import LipschitzCallback, LipschitzMeter, PointSet

    assert lipschitz_dd.LipschitzCallback is LipschitzCallback and lipschitz_dd.PointSet is PointSet
    assert lipschitz_dd.LipschitzMeter is LipschitzMeter and lipschitz_dd.lower_bound is lower_bound
    for name in lipschitz_dd.__all__:
        assert getattr(lipschitz_dd, name) is not None
    assert set(lipschitz_dd.__all__) <= set(dir(lipschitz_dd))
    try:
        lipschitz_dd.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_bounds_all_is_the_public_functions_and_result_types():
    internals = {
        "jacobian_rows",
        "power_iteration_spectral_norms",
        "top_singular_triplets",
        "float32_measurement",
        "iterate_batches",
        "TopPoints",
        "LeftVectorStore",
        "choose_method",
        "warm_spectral_norms",
        "project_to_box",
        "planar_regions",
        "LayerConstant",
    }
    assert not internals & set(bounds.__all__)
    assert len(bounds.__all__) <= 45 and len(set(bounds.__all__)) == len(bounds.__all__)
    for name in bounds.__all__:
        assert getattr(bounds, name) is not None
    from lipschitz_dd.bounds.jacobian import jacobian_rows  # internals stay importable from their modules
    from lipschitz_dd.bounds.optimised import TopPoints

    assert callable(jacobian_rows) and TopPoints is not None
