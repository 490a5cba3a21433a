"""Batched local generation: token-length buckets, a shared prompt prefix computed once, left padding, a
preallocated KV cache, finished rows dropped, greedy by default.

``generate`` answers prompts in batches of ``settings.batch_size`` prompts of similar token length. Its decode loop
drops a row from the batch (and from the KV cache) as soon as that row has emitted its end-of-sequence token, so a
batch of mostly short replies (refusals) does not keep computing the long ones' padding; ``model.generate`` stops a
batch only when every row is done. Greedy fp32 replies equal plain ``model.generate`` on one prompt at a time
without padding (up to float rounding of padded batches, which ``scripts/bench_generation.py`` counts). Models whose
generation config asks for logits processors this loop does not implement (repetition penalty, beam search, ...)
go through ``model.generate`` instead, with the same batching.

The prefix every prompt of a batch shares (the chat template's system turn; an instruction such as SST-2's, 77 of
its prompts' 106 tokens) is prefilled once and its KV cache copied to every row (``_prefill``): on a 2-core CPU
that took SST-2 fine-tune accuracy on 200 items from 54 s to 35 s and the study's 214 evaluation prompts from 66 s
to 60 s, with identical replies.

``settings.dtype`` chooses the arithmetic: ``"model"`` (default) the weights' own dtype; ``"bf16"`` a merged bf16
copy of the model; ``"auto"`` bf16 where the CPU has native bf16 (``orthoguard.hardware.prefers_bf16``), else the
weights' dtype. bf16 changes the replies a little; on a 2-core AVX-512-BF16 CPU it was faster than fp32 for
SmolLM2-135M at batch 32 and more (see the benchmark), while bf16 *autocast* over fp32 weights was not.
"""

from __future__ import annotations

import copy
import inspect
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from orthoguard.errors import ConfigError
from orthoguard.judges import strip_thinking
from orthoguard.models import CHAT_TEMPLATE_KWARGS


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    # "model": the model as given, in its weights' dtype. "auto" (bf16 where the CPU has native bf16, else the
    # weights' dtype), "bf16" and "fp32" generate with merged_for_generation's copy (LoRA merged, cast).
    dtype: str = "model"


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]] | str) -> str:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


# PEFT model -> (what the copy was made for, the merged copy): a refusal probe every few steps refreshes the
# adapted weights of one copy instead of deep-copying and merging the whole model again (2-6 s for SmolLM2 on a
# 2-core CPU, against well under a second for the refresh)
_MERGED_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def merged_for_generation(model, dtype: torch.dtype | None = None):
    """A model to generate with: a PEFT model's LoRA adapters merged into a copy of its weights, optionally cast.

    The argument is left as it was (a model in training keeps training its adapters). A plain model comes back as
    is when ``dtype`` is None or its own dtype, else as a cast copy. Only LoRA-type adapters on an unquantized base
    are merged; anything else is returned unmerged (a cast copy where ``dtype`` asks for one). When only the LoRA
    factors of a plain-LoRA model can change (nothing else trainable), the merged copy is kept and, on the next
    call, only its adapted weights are recomputed (base weight + scale·B·A, as PEFT merges them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    mergeable = _is_peft(model) and _lora_only(model) and not getattr(base, "is_quantized", False)
    current = next(model.parameters()).dtype
    if not mergeable and (dtype is None or dtype == current):
        return model
    key = _copy_key(model, base, dtype) if mergeable else None
    if key is not None and (kept := _MERGED_COPIES.get(model)) is not None and kept[0] == key:
        refreshed = _refresh_merged(base, kept[1])
        if refreshed is not None:
            return refreshed
    was_training = model.training
    clone = copy.deepcopy(model)
    model.train(was_training)
    if mergeable:
        clone = clone.merge_and_unload()
    if dtype is not None and dtype != current:
        clone = clone.to(dtype)
    if key is not None:
        _MERGED_COPIES[model] = (key, clone)
    return clone.eval()


def _lora_layers(model) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def _copy_key(model, base, dtype) -> tuple | None:
    """What a kept merged copy must match, or None when a copy cannot be refreshed from the LoRA factors alone:
    something besides LoRA factors is trainable (its weights may have changed), or an adapter is not plain LoRA
    (DoRA and other variants, LoRA biases merge differently)."""
    if any(p.requires_grad and "lora_" not in n for n, p in model.named_parameters()):
        return None
    layers = _lora_layers(base)
    for _, layer in layers:
        for a in layer.active_adapters:
            if a in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(a, False):
                return None
    adapters = tuple(sorted({a for _, layer in layers for a in layer.active_adapters}))
    return dtype, adapters, tuple(name for name, _ in layers)


@torch.no_grad()
def _refresh_merged(base, clone):
    """Recompute the kept copy's adapted weights from the current LoRA factors of ``base`` (the PEFT model's
    underlying model, whose module names the merged copy has), in place and cast; None if the names differ."""
    targets = dict(clone.named_modules())
    layers = _lora_layers(base)
    if any(name not in targets for name, _ in layers):
        return None
    for name, layer in layers:
        weight = layer.get_base_layer().weight.detach()
        merged = weight.clone()
        for a in layer.active_adapters:
            if a in layer.lora_A:
                merged += layer.get_delta_weight(a).to(weight.dtype)
        targets[name].weight.copy_(merged)
    return clone.eval()


def _lora_only(model) -> bool:
    try:
        from peft import PeftType
    except ImportError:
        return False
    configs = getattr(model, "peft_config", {}) or {}
    return bool(configs) and all(getattr(c, "peft_type", None) == PeftType.LORA for c in configs.values())


def _target_dtype(model, setting: str) -> torch.dtype | None:
    if setting in ("model", None):
        return None
    if setting == "fp32":
        return torch.float32
    if setting == "bf16":
        return torch.bfloat16
    if setting == "auto":
        if model.device.type != "cpu":
            return None
        from orthoguard.hardware import prefers_bf16

        return torch.bfloat16 if prefers_bf16() else None
    raise ConfigError(f"generation dtype must be model, auto, fp32 or bf16, not {setting!r}")


# Generation-config fields whose non-default values add logits processors or search modes the fast loop lacks.
_NEUTRAL = {
    "num_beams": 1, "min_length": 0, "min_new_tokens": None, "typical_p": 1.0, "min_p": None, "top_h": None,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "renormalize_logits": False, "stop_strings": None, "guidance_scale": None, "watermarking_config": None,
    "penalty_alpha": None, "dola_layers": None, "num_return_sequences": 1, "remove_invalid_values": False,
    "low_memory": None, "prompt_lookup_num_tokens": None, "max_time": None,
}


def _resolved_config(model, sampling: dict):
    """The generation config ``model.generate(**sampling)`` would use, with transformers' defaults filled in."""
    gc = copy.deepcopy(model.generation_config)
    gc.update(**{k: v for k, v in sampling.items() if v is not None})
    for key, value in type(gc)._get_default_generation_params().items():
        if getattr(gc, key, None) is None:
            setattr(gc, key, value)
    return gc


def _fast_loop_supported(model, gc) -> bool:
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    for key, neutral in _NEUTRAL.items():
        value = getattr(gc, key, None)
        if value not in (None, neutral) and not (isinstance(neutral, bool) and value is False):
            return False
    return True


def _eos_ids(gc) -> list[int]:
    eos = gc.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _next_tokens(logits: torch.Tensor, gc, sample: bool) -> torch.Tensor:
    """Greedy argmax, or HF's sampling order: temperature, top-k, top-p, then a multinomial draw."""
    if not sample:
        return logits.argmax(-1)
    scores = logits.float()
    if gc.temperature not in (None, 1.0):
        scores = scores / gc.temperature
    top_k = gc.top_k or 0
    if 0 < top_k < scores.shape[-1]:
        # HF masks everything below the k-th score and then sorts the whole vocabulary for top-p; sorting only the
        # candidates (all scores tied with the k-th kept, as HF keeps them) draws from the same distribution
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1, None]
        keep = scores >= kth
        width = int(keep.sum(-1).max())
        values, indices = torch.topk(scores.masked_fill(~keep, float("-inf")), width, dim=-1)
        return indices.gather(1, _sample_top_p(values, gc.top_p)[:, None]).squeeze(1)
    return _sample_top_p(scores, gc.top_p)


def _sample_top_p(scores: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """A multinomial draw after HF's top-p filter (the smallest set of tokens whose probability exceeds top_p)."""
    if top_p is not None and top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False  # keep at least one token
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _cache_keyword(model) -> str:
    """transformers 5.2x renamed the forward's ``past_key_values`` to ``cache``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _preallocated_cache(model, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` whose full-attention layers write into one buffer of ``capacity`` positions."""
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of one buffer sized for the whole reply: a decode step
    writes its token in place where ``DynamicLayer`` concatenates, copying every layer's whole cache at every step
    (``aten::cat`` was 22-33% of decode time for SmolLM2 on a 2-core CPU). Same values, same attention."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._keys = self._values = None  # the buffers; ``keys``/``values`` are their first get_seq_length() positions

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            self._grow(key_states, value_states, max(end, self.capacity), start)
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self._expose(end)
        return self.keys, self.values

    def _grow(self, key_states, value_states, size: int, filled: int) -> None:
        b, h = key_states.shape[:2]
        keys = key_states.new_empty((b, h, size, key_states.shape[-1]))
        values = value_states.new_empty((b, h, size, value_states.shape[-1]))
        if self._keys is not None:
            keys[:, :, :filled] = self._keys[:, :, :filled]
            values[:, :, :filled] = self._values[:, :, :filled]
        self._keys, self._values = keys, values

    def _expose(self, length: int) -> None:
        self.keys = self._keys[:, :, :length]
        self.values = self._values[:, :, :length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._keys is not None:
            length = self.get_seq_length()
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._expose(length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._keys is not None:
            length = self.get_seq_length()
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._expose(length)

    # crop: DynamicLayer's (a shorter view of the buffer; the next update writes after it)

    def reset(self) -> None:
        self._keys = self._values = None
        super().reset()


MIN_SHARED_PREFIX = 8  # shorter shared prefixes are prefilled with the rest of each row


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row has in common, leaving each row at least one token of its own."""
    if len(rows) < 2:
        return 0
    common = os.path.commonprefix(rows)  # of the lexicographic min and max: the prefix every row shares
    return max(0, min(len(common), min(len(r) for r in rows) - 1))


def _prefill(model, rows: list[list[int]], pad_id: int, cache, key: str):
    """The prompt forward pass: logits of each row's last token, the KV cache filled, the attention mask and each
    row's last position. A prefix every row shares (the chat template's system turn, a task's instruction) is
    computed once and its cache copied to every row; each row's own tokens follow it, left-padded, the padding
    masked, so every row sees exactly the positions and tokens it would see alone."""
    shared = shared_prefix_length(rows)
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    if shared:
        prefix = torch.tensor([rows[0][:shared]], dtype=torch.long, device=model.device)
        model(input_ids=prefix, position_ids=torch.arange(shared, device=model.device)[None], use_cache=True,
              logits_to_keep=_last_position(shared, model.device), **{key: cache})
        cache.batch_repeat_interleave(len(rows))
    input_ids, own = _left_pad([r[shared:] for r in rows], pad_id, model.device)
    positions = (shared + own.cumsum(-1) - 1).masked_fill(own == 0, 1)
    mask = torch.cat([own.new_ones((len(rows), shared)), own], dim=1)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=_last_position(input_ids.shape[1], model.device), **{key: cache})
    return out, mask, positions[:, -1]


def _last_position(length: int, device) -> torch.Tensor:
    """``logits_to_keep`` for the last position, as an index tensor rather than the integer 1.

    The integer slices the hidden states (``[:, -1:, :]``, not contiguous across rows). When the LM head's weight
    does not require grad (a merged copy, a frozen base), ``torch.matmul`` then does not fold the rows into one
    matrix product: it expands the weight to every row and runs a batched product, copying a rows x hidden x vocab
    tensor (3.6 GB for SmolLM2 at batch 64 in bf16, seconds per batch). Indexing with a tensor gives a contiguous
    copy of the last hidden states (rows x hidden), which folds (pytorch/pytorch#186148 describes the fold check)."""
    return torch.tensor([length - 1], device=device)


def _decode_batch(model, rows: list[list[int]], pad_id: int, gc, max_new_tokens: int, sample: bool) -> list[list[int]]:
    """New tokens of each row (its end-of-sequence token included), finished rows dropped from the batch."""
    eos = torch.tensor(_eos_ids(gc), dtype=torch.long, device=model.device)
    cache = _preallocated_cache(model, max(len(r) for r in rows) + max_new_tokens)
    key = _cache_keyword(model)
    out, mask, last_position = _prefill(model, rows, pad_id, cache, key)
    alive = torch.arange(len(rows), device=model.device)
    generated: list[list[int]] = [[] for _ in rows]
    for step in range(max_new_tokens):
        tokens = _next_tokens(out.logits[:, -1, :], gc, sample)
        for row, token in zip(alive.tolist(), tokens.tolist()):
            generated[row].append(token)
        if step == max_new_tokens - 1:
            break
        done = torch.isin(tokens, eos) if eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, tokens, mask, last_position = alive[keep], tokens[keep], mask[keep], last_position[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last_position = last_position + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=last_position[:, None], use_cache=True,
                    **{key: cache})
    return generated


def _hf_batch(model, rows: list[list[int]], pad_id: int, settings: GenerationSettings, sampling: dict) -> list[list[int]]:
    input_ids, mask = _left_pad(rows, pad_id, model.device)
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                         pad_token_id=pad_id, use_cache=True, **sampling)
    return out[:, input_ids.shape[1]:].tolist()


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` of similar length, longest first (stable)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]] | str],
    settings: GenerationSettings = GenerationSettings(),
    seed: int = 0,
    desc: str = "generate",
) -> list[str]:
    """Answer each prompt (a user string or a message list). Output order matches input order.

    Prompts are grouped by token length so that each batch pads little; sampling is seeded, on a fork of the RNG,
    for reproducibility (the same prompts, settings and batch size give the same replies)."""
    new = generate_token_ids(model, tokenizer, prompts, settings, seed, desc)
    return [strip_thinking(text).strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)] if new else []


@torch.inference_mode()
def generate_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]] | str],
    settings: GenerationSettings = GenerationSettings(),
    seed: int = 0,
    desc: str = "generate",
) -> list[list[int]]:
    """``generate``'s new tokens for each prompt, in input order, each up to and including its end-of-sequence
    token (where one came before ``max_new_tokens``); transformers' path may add padding after it."""
    if not prompts:
        return []
    if settings.batch_size < 1 or settings.max_new_tokens < 1:
        raise ConfigError("generation needs batch_size >= 1 and max_new_tokens >= 1")
    target = _target_dtype(model, settings.dtype)
    work_model = merged_for_generation(model, target) if settings.dtype not in ("model", None) else model
    was_training = model.training
    work_model.eval()
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    token_rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    gc = _resolved_config(work_model, sampling)
    fast = _fast_loop_supported(work_model, gc)
    outputs: list[list[int]] = [[] for _ in texts]
    # seeded here, on a fork of the RNG: a refusal probe in the middle of training leaves training's RNG as it was
    gpu = [work_model.device.index or 0] if work_model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=gpu):
            torch.manual_seed(seed)
            for idx in tqdm(length_batches([len(r) for r in token_rows], settings.batch_size), desc=desc, unit="batch",
                            leave=False):
                rows = [token_rows[i] for i in idx]
                new = _decode_batch(work_model, rows, pad_id, gc, settings.max_new_tokens, settings.do_sample) if fast \
                    else _hf_batch(work_model, rows, pad_id, settings, sampling)
                for i, tokens in zip(idx, new):
                    outputs[i] = tokens
    finally:
        model.train(was_training)
    return outputs


def generate_vllm(model_dir: str, tokenizer: PreTrainedTokenizerBase, prompts: list[list[dict[str, str]] | str],
                  settings: GenerationSettings = GenerationSettings(), seed: int = 0) -> list[str]:
    """The same prompts and settings through vLLM (GPU): ``pip install 'orthoguard[vllm]'``.

    ``model_dir`` is a model folder with the adapters already merged (see ``evaluation``); vLLM batches by itself.
    """
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise ConfigError("evaluation.backend 'vllm' needs vLLM: pip install 'orthoguard[vllm]'") from None
    llm = LLM(model=model_dir, seed=seed, trust_remote_code=False)
    params = SamplingParams(
        max_tokens=settings.max_new_tokens,
        temperature=settings.temperature if settings.do_sample else 0.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
        seed=seed,
    )
    outputs = llm.generate([chat_prompt(tokenizer, p) for p in prompts], params)
    return [strip_thinking(o.outputs[0].text).strip() for o in outputs]

