"""SplitMultiheadAttention: nn.MultiheadAttention with its four projections as child layers, so that
fastinfer.quantize can make each one an Int8Linear.

nn.MultiheadAttention keeps q/k/v as one in_proj_weight parameter and applies out_proj inside its functional
forward without calling it, so no module swap can reach them: a quantized transformer built from it
(torchvision's ViT, nn.TransformerEncoder/Decoder, CLIP) kept a third of its linear work in float. This module
computes the same function (same arguments, masks, defaults, return value) with q_proj, k_proj, v_proj and
out_proj as ordinary layers, called on their inputs, and the attention itself in ``attention`` (a
ScaledDotProductAttention, its own leaf for fastinfer.profile).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(head_dim) + mask) v over [N, heads, L, head_dim] inputs; with ``need_weights``,
    computed step by step so the attention probabilities can be returned (as nn.MultiheadAttention does),
    else by torch's fused F.scaled_dot_product_attention. No parameters."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], dropout_p: float, is_causal: bool,
                need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        if not need_weights:
            return F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal), None
        scores = (q * math.sqrt(1.0 / q.shape[-1])) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p)
        return probs @ v, probs


def _float_mask(mask: Optional[Tensor], arg: str, dtype: torch.dtype) -> Optional[Tensor]:
    """A bool mask (True: not attended) as an additive float mask of `dtype` (-inf where True); a float
    mask in `dtype`."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{arg} must be a bool or floating-point tensor, got dtype {mask.dtype}")
    return mask.to(dtype)


class SplitMultiheadAttention(nn.Module):
    """Drop-in for nn.MultiheadAttention (same constructor arguments and forward) whose projections are
    child layers: ``q_proj`` [embed_dim <- embed_dim], ``k_proj`` [embed_dim <- kdim], ``v_proj``
    [embed_dim <- vdim] and ``out_proj``, nn.Linear (fastinfer.nn.Int8Linear after fastinfer.quantize).
    Build one from a float layer with :meth:`from_float`; fastinfer.quantize does so for every
    nn.MultiheadAttention it quantizes. To code that inspects its weights it reads as an nn.MultiheadAttention
    with separate q/k/v weights: ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` (the projections'
    weights, dequantized when int8), ``in_proj_bias`` (their biases, concatenated), ``in_proj_weight`` None.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be > 0, got {embed_dim} and {num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        # As an nn.MultiheadAttention with separate q/k/v weights (no packed in_proj_weight), whatever kdim and
        # vdim are: nn.TransformerEncoderLayer then leaves its fused float fast path (which would read the
        # weights and bypass the projections) before touching them, and runs its own forward.
        self._qkv_same_embed_dim = False
        self.in_proj_weight = None
        self.dropout, self.batch_first, self.add_zero_attn = float(dropout), batch_first, add_zero_attn
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        if add_bias_kv:  # key/value vectors appended to every sequence (after the projections)
            self.bias_k = nn.Parameter(torch.zeros(1, 1, embed_dim, **kw))
            self.bias_v = nn.Parameter(torch.zeros(1, 1, embed_dim, **kw))
        else:
            self.bias_k = self.bias_v = None
        self.attention = ScaledDotProductAttention()

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention) -> "SplitMultiheadAttention":
        """The same attention as `mha`, its projection weights copied into four nn.Linear children."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        w = mha.in_proj_weight if mha._qkv_same_embed_dim else mha.q_proj_weight
        e = mha.embed_dim
        new = cls(e, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.bias_k is not None,
                  mha.add_zero_attn, mha.kdim, mha.vdim, mha.batch_first, device=w.device, dtype=w.dtype)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().split(e)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().split(e) if mha.in_proj_bias is not None else (None,) * 3
        with torch.no_grad():
            for lin, wt, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                lin.weight.copy_(wt)
                if b is not None:
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
            if mha.bias_k is not None:
                new.bias_k.copy_(mha.bias_k)
                new.bias_v.copy_(mha.bias_v)
        new.train(mha.training)
        return new

    @property
    def q_proj_weight(self) -> Tensor:
        return self.q_proj.weight

    @property
    def k_proj_weight(self) -> Tensor:
        return self.k_proj.weight

    @property
    def v_proj_weight(self) -> Tensor:
        return self.v_proj.weight

    @property
    def in_proj_bias(self) -> Optional[Tensor]:
        biases = [p.bias for p in (self.q_proj, self.k_proj, self.v_proj)]
        return None if biases[0] is None else torch.cat(biases)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """As nn.MultiheadAttention.forward: (output, attention weights or None)."""
        if isinstance(query, Tensor) and query.is_nested:
            return self._nested_forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                        average_attn_weights, is_causal)
        batched = self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        if not batched:  # [L, E]: a batch of one, batch first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        # Projections on the inputs as given; the heads are split from there (batch first or not).
        seq_first = batched and not self.batch_first
        n = query.shape[1] if seq_first else query.shape[0]
        tgt = query.shape[0] if seq_first else query.shape[1]
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if seq_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        src = k.shape[1]

        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", q.dtype)
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (n, src):
            raise ValueError(f"key_padding_mask must have shape {(n, src) if batched else (src,)}, got "
                             f"{tuple(key_padding_mask.shape[int(not batched):])}")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True is a hint that attn_mask is the causal mask: pass attn_mask as well "
                             "(nn.Transformer.generate_square_subsequent_mask makes one)")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # the fused kernel applies the causal mask itself
        else:
            attn_mask = _float_mask(attn_mask, "attn_mask", q.dtype)
            is_causal = False
        if attn_mask is not None:
            want = (tgt, src) if attn_mask.dim() == 2 else (n * self.num_heads, tgt, src)
            if tuple(attn_mask.shape) != want:
                raise ValueError(f"attn_mask must have shape {want} ({attn_mask.dim()}-D), got "
                                 f"{tuple(attn_mask.shape)}")
            attn_mask = attn_mask.reshape(-1, self.num_heads, tgt, src) if attn_mask.dim() == 3 else attn_mask

        if self.bias_k is not None:  # one more key/value position, attended by every query
            k = torch.cat([k, self.bias_k.to(k.dtype).expand(n, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.to(v.dtype).expand(n, 1, -1)], dim=1)
            attn_mask, key_padding_mask = _pad_last(attn_mask), _pad_last(key_padding_mask)
        q = q.reshape(n, tgt, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(n, k.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(n, v.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        if self.add_zero_attn:  # and one all-zero key/value position
            zeros = torch.zeros(n, self.num_heads, 1, self.head_dim, dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            attn_mask, key_padding_mask = _pad_last(attn_mask), _pad_last(key_padding_mask)
        if key_padding_mask is not None:
            kpm = key_padding_mask[:, None, None, :]
            attn_mask = kpm if attn_mask is None else attn_mask + kpm

        out, weights = self.attention(q, k, v, attn_mask, self.dropout if self.training else 0.0, is_causal,
                                      need_weights)
        # [N, heads, L, head_dim] -> the input's layout, heads concatenated
        out = out.permute(2, 0, 1, 3) if seq_first else out.transpose(1, 2)
        out = self.out_proj(out.reshape(*out.shape[:2], self.embed_dim))
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    def _nested_forward(self, x, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                        is_causal):
        """A nested batch of sequences [N, (L_i), E]: what nn.TransformerEncoder passes its layers (in eval,
        with a padding mask, where it built its fast path for torch's attention). Self-attention over each
        sequence: padded to the longest, the padding masked out of the keys, the output nested again."""
        if key is not x or value is not x or not self.batch_first or x.dim() != 3:
            raise ValueError("a nested tensor input is taken for batch-first self-attention only (query, key and "
                             "value the same 3-D nested tensor, as nn.TransformerEncoder passes it)")
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("a nested tensor input carries its own padding: key_padding_mask, attn_mask and "
                             "is_causal must be None / False with it")
        lengths = [t.shape[0] for t in x.unbind()]
        padded = torch.nested.to_padded_tensor(x, 0.0)
        pad = torch.arange(padded.shape[1], device=padded.device)[None, :] >= torch.tensor(lengths,
                                                                                          device=padded.device)[:, None]
        out, weights = self.forward(padded, padded, padded, key_padding_mask=pad, need_weights=need_weights,
                                    average_attn_weights=average_attn_weights)
        return torch.nested.nested_tensor([o[:n] for o, n in zip(out.unbind(), lengths)]), weights

    def _check_inputs(self, query, key, value, key_padding_mask, attn_mask) -> bool:
        """Shapes as nn.MultiheadAttention takes them, with errors that name the argument. Returns batched."""
        for arg, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{arg} must be a tensor, got {type(t).__name__}")
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be 3-D (batched) or 2-D (unbatched), got shape {tuple(query.shape)}")
        batched = query.dim() == 3
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"key and value must be {query.dim()}-D like query, got shapes {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        for arg, t, size in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != size:
                raise ValueError(f"{arg}'s last dimension must be {size}, got shape {tuple(t.shape)}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key and value must have the same sequence and batch sizes, got shapes "
                             f"{tuple(key.shape)} and {tuple(value.shape)}")
        batch_dim = 0 if self.batch_first else 1
        if batched and key.shape[batch_dim] != query.shape[batch_dim]:
            raise ValueError(f"key and query must have the same batch size (dim {batch_dim}, "
                             f"batch_first={self.batch_first}), got shapes {tuple(key.shape)} and {tuple(query.shape)}")
        if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
            raise ValueError(f"key_padding_mask must be {query.dim() - 1}-D for a {query.dim()}-D query, got shape "
                             f"{tuple(key_padding_mask.shape)}")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise ValueError(f"attn_mask must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
        return batched

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
        if (self.kdim, self.vdim) != (self.embed_dim, self.embed_dim):
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bias_k is not None:
            s += ", add_bias_kv=True"
        if self.add_zero_attn:
            s += ", add_zero_attn=True"
        return s


def _pad_last(mask: Optional[Tensor]) -> Optional[Tensor]:
    """A float mask with one more key position, attended (0)."""
    return None if mask is None else F.pad(mask, (0, 1))
