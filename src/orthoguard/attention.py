"""The attention of a LoRA training step: which kernel, and packed batches attended sample by sample.

transformers' default, SDPA, runs PyTorch's fused CPU flash-attention kernel. Its bf16 path multiplies small blocks
one call at a time; with AMX tiles that is fast, without them (AVX512-BF16 only) it is slower than three large
batched matmuls: on a 2-core AVX512-BF16 EPYC, one layer of SmolLM2 at batch 4 x 448 took 39-50 ms forward and
backward with SDPA against 22-23 ms as matmul, softmax, matmul (the attention was a third of a bf16 training step).

``eager`` is that matmul attention with the numerics of transformers' own eager attention under autocast (bf16
scores, an fp32 softmax, bf16 probabilities; SDPA keeps the scores in fp32), for the training step only: a forward
pass that autograd does not record (generation, refusal probes, answer losses) still runs SDPA, so the replies and
losses that evaluation reports do not depend on this choice. The masks are SDPA's (``sdpa_mask``).

Packed batches (``resolve_packing``; transformers' ``DataCollatorWithFlattening``) put a batch's samples back to back
in one row; the attention here splits that row at the restarts of the position ids and attends each sample causally
with itself, with either kernel, so no position is padding and no score is computed only to be masked.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Literal

import torch

TrainAttention = Literal["auto", "sdpa", "eager"]
Packing = Literal["auto", "on", "off"]
# the names registered with transformers' attention and mask interfaces, one per kernel
IMPLEMENTATIONS = {"sdpa": "orthoguard_train_sdpa", "eager": "orthoguard_train_eager"}


def resolve(requested: TrainAttention, device: str, autocast: torch.dtype | None, features=None) -> str:
    """``sdpa`` or ``eager`` for a training config's ``attention``. ``auto``: eager where training runs bf16
    autocast on a CPU without AMX (measured faster there, above), SDPA everywhere else (GPUs, fp32 on CPU where
    matmul attention was no faster, and CPUs with AMX, where the fused kernel has its tile path and the matmul
    attention was not measured)."""
    if requested != "auto":
        return requested
    if device != "cpu" or autocast != torch.bfloat16:
        return "sdpa"
    from orthoguard.hardware import cpu_features

    return "sdpa" if (features or cpu_features()).amx_bf16 else "eager"


def resolve_packing(requested: Packing, device: str) -> bool:
    """Whether training batches are packed (``auto``: on a CPU). A packed batch is one row holding the samples
    back to back, position ids restarting at each, and each sample attends to itself alone: no padding in any
    matmul, and attention costs the sum of the squared sample lengths instead of batch x longest squared. On a GPU
    the padded batch keeps one kernel call per layer, which is what GPUs want."""
    return requested == "on" or (requested == "auto" and device == "cpu")


def packed_segments(position_ids: torch.Tensor | None, length: int) -> list[tuple[int, int]] | None:
    """(start, end) of each sample of a packed one-row batch (position ids 0, 1, ... restarting at every sample),
    or None when the batch is not packed."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] != length:
        return None
    positions = position_ids[0]
    starts = (positions == 0).nonzero().flatten()
    if len(starts) < 2 or int(starts[0]) != 0:
        return None
    sample = torch.zeros(length, dtype=torch.long, device=positions.device)
    sample[starts[1:]] = 1
    if not torch.equal(positions, torch.arange(length, device=positions.device) - starts[sample.cumsum(0)]):
        return None  # positions that do not count up from 0 within each sample: not a packed batch
    bounds = starts.tolist() + [length]
    return list(zip(bounds, bounds[1:]))


def _causal_attention(kernel: str, query, key, value, scaling: float, dropout: float, training: bool, mask=None):
    """One attention call on [batch, heads, q, dim] tensors (key and value already repeated to the query heads);
    ``mask`` is SDPA's boolean mask, or None for causal attention."""
    if kernel == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout if training else 0.0, scale=scaling,
            is_causal=mask is None and query.shape[2] > 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is None:
        q_len, k_len = scores.shape[-2:]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, value)


def training_attention_forward(kernel: str, module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling: float | None = None, **kwargs):
    """transformers' attention signature: ``query`` [batch, heads, q, dim], ``key``/``value`` [batch, kv_heads, k,
    dim], ``attention_mask`` SDPA's boolean mask or None (causal). Returns ([batch, q, heads, dim], None). A packed
    batch (``packed_segments`` of the ``position_ids``) is attended sample by sample. Without autograd recording,
    or with arguments it does not handle, it hands over to transformers' SDPA."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    unsupported = any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "position_bias"))
    if not torch.is_grad_enabled() or unsupported or (attention_mask is not None and attention_mask.dtype != torch.bool):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    segments = packed_segments(kwargs.get("position_ids"), query.shape[2]) if query.shape[2] == key.shape[2] else None
    if segments is None:
        out = _causal_attention(kernel, query, key, value, scaling, dropout, module.training, attention_mask)
    else:  # each sample causally with itself: the block-diagonal mask is not needed
        out = torch.cat([_causal_attention(kernel, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scaling, dropout,
                                           module.training) for s, e in segments], dim=2)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for kernel, name in IMPLEMENTATIONS.items():
        AttentionInterface.register(name, functools.partial(training_attention_forward, kernel))
        AttentionMaskInterface.register(name, sdpa_mask)


@contextlib.contextmanager
def training_attention(model, kernel: str, packed: bool = False):
    """Within the block, ``model`` (a transformers model, or a PEFT model around one) trains with ``kernel``
    (``sdpa`` or ``eager``), attending sample by sample in packed batches when ``packed``; its own implementation
    is restored after. A model whose attention is not SDPA (a config that asked for another) or that cannot switch
    keeps its own (transformers then masks a packed batch block-diagonally: the same result, more work). Yields the
    attention that trains."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(base.config, "_attn_implementation", None)
    switch = (kernel == "eager" or packed) and before == "sdpa" \
        and getattr(base, "_can_set_attn_implementation", lambda: False)()
    if switch:
        _register()
        base.set_attn_implementation(IMPLEMENTATIONS[kernel])
    try:
        yield kernel if switch else before
    finally:
        if switch:
            base.set_attn_implementation(before)
