"""Feature hints for distill(): forward hooks that capture named modules' outputs, and HintProjection,
the learned map (nn.Linear or 1x1 nn.Conv2d) from a student feature onto its teacher feature."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class HintProjection(nn.Module):
    """Maps a student feature onto the teacher's: nn.Linear for [N, C] features, a 1x1 nn.Conv2d
    for [N, C, H, W] ones, after adaptive average pooling to the teacher's (H, W) when the
    spatial sizes differ. Pooling first is exact (pooling and a 1x1 conv commute) and cheaper."""

    def __init__(self, in_channels: int, out_channels: int, spatial: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.spatial = None if spatial is None else (int(spatial[0]), int(spatial[1]))
        if self.spatial is None:
            self.proj = nn.Linear(in_channels, out_channels)
        else:
            self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial is not None and tuple(x.shape[-2:]) != self.spatial:
            x = F.adaptive_avg_pool2d(x, self.spatial)
        return self.proj(x)

    def extra_repr(self) -> str:
        return "" if self.spatial is None else f"spatial={self.spatial}"

    @classmethod
    def between(cls, student_feat, teacher_feat, student_name: str, teacher_name: str) -> "HintProjection":
        """Sized from one batch's features (how distill() builds them lazily)."""
        for role, name, f in (("student", student_name, student_feat), ("teacher", teacher_name, teacher_feat)):
            if not isinstance(f, torch.Tensor):
                raise TypeError(f"feature_pairs: {role} module {name!r} must output a tensor to be used as a "
                                f"hint, got {type(f).__name__}")
        s, t = tuple(student_feat.shape), tuple(teacher_feat.shape)
        pair = f"student {student_name!r} {s} -> teacher {teacher_name!r} {t}"
        if len(s) != len(t) or len(s) not in (2, 4):
            raise ValueError(f"feature_pairs: features must both be [N, C] or both [N, C, H, W]; got {pair}")
        if s[0] != t[0]:
            raise ValueError(f"feature_pairs: batch sizes differ; got {pair}")
        return cls(s[1], t[1], spatial=t[2:] if len(t) == 4 else None)


class FeatureCapture:
    """Forward hooks that keep the latest output of each named module; remove() takes them off,
    so the models are left as they came."""

    def __init__(self, model: nn.Module, names: List[str]):
        modules = dict(model.named_modules())
        self.outputs: Dict[str, object] = {}
        # Deduplicated: two student modules may take hints from the same teacher module.
        self._handles = [modules[n].register_forward_hook(self._keeper(n)) for n in dict.fromkeys(names)]

    def _keeper(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = output
        return hook

    def get(self, name: str):
        try:
            return self.outputs[name]
        except KeyError:
            raise RuntimeError(f"feature_pairs: module {name!r} did not run in the forward pass") from None

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()


def check_feature_pairs(feature_pairs: Optional[Mapping[str, str]], student: nn.Module,
                        teacher: nn.Module) -> List[Tuple[str, str]]:
    """{student_module_name: teacher_module_name} -> [(student_name, teacher_name)], names checked."""
    if feature_pairs is None:
        return []
    if not isinstance(feature_pairs, Mapping):
        raise TypeError("feature_pairs must be a dict {student_module_name: teacher_module_name}, "
                        f"got {type(feature_pairs).__name__}")
    pairs = list(feature_pairs.items())
    for role, model, names in (("student", student, [s for s, _ in pairs]),
                               ("teacher", teacher, [t for _, t in pairs])):
        # "" (the model itself) is left out: its output is the logits, which the KD term already uses.
        valid = [n for n, _ in model.named_modules() if n]
        bad = [n for n in names if n not in valid]
        if bad:
            raise ValueError(f"feature_pairs: unknown {role} module name(s) {bad}; "
                             f"valid {role} module names: {valid}")
    return pairs
