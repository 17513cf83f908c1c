"""Knowledge distillation: distill() trains a small student on a frozen teacher's soft targets
(and optional feature hints); kd_loss() is the loss on its own, for custom training loops."""
from .hints import HintProjection
from .kd import DistillResult, distill
from .loss import kd_loss

__all__ = ["distill", "kd_loss", "DistillResult", "HintProjection"]
