"""Workflows that swap float layers for quantized ones: quantize, fuse (conv-bn folding, activation
fusion), calibrate (static activation scales) and the observers behind it."""
from .api import QuantConfig, QuantizationReport, quantize
from .calibrate import CalibrationResult, calibrate
from .fuse import FuseReport, fuse
from .load import load_quantized
from .observers import OBSERVERS, MinMaxObserver, MSEObserver, PercentileObserver

__all__ = ["QuantConfig", "QuantizationReport", "quantize", "calibrate", "CalibrationResult", "fuse", "FuseReport",
           "load_quantized", "OBSERVERS", "MinMaxObserver", "PercentileObserver", "MSEObserver"]
