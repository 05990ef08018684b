"""lipschitz_dd: Lipschitz bounds of neural networks during training (PyTorch Lightning)."""

__version__ = "0.1.0"
