"""The study's findings; importing this package registers them all (listed by their section numbers)."""

from lipschitz_dd.reproduce.findings import (  # noqa: F401
    axes,
    bias_variance,
    checkpoint_measures,
    double_descent,
    dropout_weight_decay,
    evolution,
    evolution_bound,
    heatmap,
    imagenet,
    linearisation,
    pairwise,
    pending,
    robustness,
    sandwich,
    toy2d,
    training_options,
)
