"""polymodal: pre-training large multimodal models on PyTorch's native stack."""

__version__ = "0.1.0"
