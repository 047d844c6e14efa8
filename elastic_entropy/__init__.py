"""elastic_entropy: Parle (Entropy-SGD replicas elastically coupled to their average) for PyTorch."""

__version__ = "0.1.0"
