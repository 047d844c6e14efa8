"""elastic_entropy: Parle for PyTorch (Entropy-SGD replicas elastically coupled to their mean)."""

__version__ = "0.1.0"
