"""Drop-in quantized replacements for torch.nn layers, and fused float layers."""
from .add import Int8Add
from .attention import ScaledDotProductAttention, SplitMultiheadAttention
from .conv import Int8Conv1d, Int8Conv2d
from .dropout import Int8Dropout, Int8DropPath
from .fused import ConvAct2d, LinearAct
from .gate import Int8AdaptiveAvgPool2d, Int8ChannelScale, Int8GlobalAvgPool
from .linear import SCHEMES, Int8Linear
from .norm import BatchNormQuant2d
from .pool import Int8AvgPool2d, Int8MaxPool2d, Int8Upsample, int8_interpolate
from .sparse import SparseLinear

__all__ = ["Int8Linear", "Int8Conv2d", "Int8Conv1d", "SparseLinear", "Int8MaxPool2d", "Int8AvgPool2d", "Int8Upsample",
           "int8_interpolate", "Int8Dropout", "Int8DropPath", "Int8Add", "BatchNormQuant2d", "Int8GlobalAvgPool",
           "Int8AdaptiveAvgPool2d", "Int8ChannelScale", "ConvAct2d", "LinearAct", "SplitMultiheadAttention",
           "ScaledDotProductAttention", "SCHEMES"]
