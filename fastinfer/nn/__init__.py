"""Drop-in quantized replacements for torch.nn layers."""
from .linear import Int8Linear, SCHEMES

__all__ = ["Int8Linear", "SCHEMES"]
