"""Batched local generation: left padding, KV cache, greedy by default."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from orthoguard.errors import ConfigError
from orthoguard.models import CHAT_TEMPLATE_KWARGS
from orthoguard.judges import strip_thinking


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]] | str) -> str:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS)


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

    Prompts are sorted by length so that each batch pads little; sampling is seeded for reproducibility.
    Generation runs in the weights' dtype: bf16 autocast over fp32 weights was 2-3x slower on CPU here.
    """
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    outputs: list[str] = [""] * len(texts)
    tokenizer.padding_side = "left"
    model.eval()
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    # seeded here, on a fork of the RNG: a refusal probe in the middle of training leaves training's RNG as it was
    gpu = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpu):
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(order), settings.batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start : start + settings.batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(
                **batch, max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id, use_cache=True, **sampling
            )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = strip_thinking(text).strip()
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
