"""kd_loss: Hinton's knowledge-distillation loss, a temperature-softened KL to the teacher's
distribution blended with hard-label cross-entropy, and the argument checks distill() shares."""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def _check_real(name: str, value) -> float:
    # bool is a Real in Python; alpha=True is far more likely a mistake than a request for 1.0.
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_temperature(temperature) -> float:
    t = _check_real("temperature", temperature)
    if t <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return t


def check_alpha(alpha) -> float:
    a = _check_real("alpha", alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (1: pure distillation, 0: pure hard labels), got {alpha!r}")
    return a


def _classes_last(logits: torch.Tensor) -> torch.Tensor:
    """[N, C, *] -> [N * prod(*), C], so that every position (pixel, token) counts as one sample
    in 'batchmean', the way cross_entropy's mean already counts them."""
    if logits.dim() > 2:
        return logits.movedim(1, -1).reshape(-1, logits.shape[1])
    return logits


def check_logits(student_logits, teacher_logits) -> None:
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() < 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be floating-point logits of shape [N, C, ...], "
                             f"got {t.dtype} of shape {tuple(t.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits shape {tuple(student_logits.shape)} does not match "
                         f"teacher_logits shape {tuple(teacher_logits.shape)}")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batchmean. The T^2 keeps the gradient's
    size independent of T (the softened gradients shrink as 1/T^2), as in Hinton et al. 2015."""
    # fp32 softmax: bf16 logits lose the small probabilities that carry the teacher's "dark knowledge".
    s = _classes_last(student_logits).float() / temperature
    # The teacher is a fixed target: no gradient ever flows back into it through this loss.
    t = _classes_last(teacher_logits.detach()).float() / temperature
    log_s, log_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    p_t = log_t.exp()
    # sum p_t (log p_t - log p_s), F.kl_div's products, except that a class the teacher rules out (p_t = 0: a
    # logit of -inf, as for masked classes or vocabulary padding) adds 0, as 0 log 0 = 0 (kl_div made it
    # 0 * -inf = NaN, and the whole loss NaN); its gradient is -p_t = 0 either way.
    kl = (p_t * torch.where(p_t > 0, log_t - log_s, 0.0)).sum() / s.shape[0]  # batchmean
    return kl * (temperature * temperature)


def combine(kd: Optional[torch.Tensor], ce: Optional[torch.Tensor], alpha: float) -> torch.Tensor:
    # A term with weight 0 is left out rather than multiplied by 0, so alpha=0 is exactly
    # cross-entropy and alpha=1 needs no targets (and a non-finite term cannot leak in as 0 * inf).
    if alpha == 1.0:
        return kd
    if alpha == 0.0:
        return ce
    return alpha * kd + (1.0 - alpha) * ce


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: Optional[torch.Tensor],
            temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton knowledge-distillation loss (a scalar):

        alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * cross_entropy(student, targets)

    The KL is 'batchmean' (summed over classes, averaged over samples); logits are [N, C] or
    [N, C, *] (each position then counts as a sample). ``teacher_logits`` is detached.
    ``alpha=1`` is pure distillation (``targets`` may be None), ``alpha=0`` plain cross-entropy.
    Raises ValueError for temperature <= 0, alpha outside [0, 1] or mismatched logit shapes.
    """
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    check_logits(student_logits, teacher_logits)
    if targets is None and alpha != 1.0:
        raise ValueError(f"targets is required unless alpha == 1 (pure distillation); alpha={alpha}")
    kd = soft_kl(student_logits, teacher_logits, temperature) if alpha != 0.0 else None
    ce = F.cross_entropy(student_logits, targets) if alpha != 1.0 else None
    return combine(kd, ce, alpha)


def kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: Optional[torch.Tensor],
             temperature: float) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Both unweighted terms (distill() reports each one per epoch, whatever alpha is); no cross-entropy
    without targets."""
    ce = F.cross_entropy(student_logits, targets) if targets is not None else None
    return soft_kl(student_logits, teacher_logits, temperature), ce
