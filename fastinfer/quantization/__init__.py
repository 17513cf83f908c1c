"""Workflows that swap float layers for quantized ones."""
from .api import QuantConfig, QuantizationReport, quantize

__all__ = ["QuantConfig", "QuantizationReport", "quantize"]
