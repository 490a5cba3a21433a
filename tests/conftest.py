"""Shared fixtures: the real SmolLM2 tokenizer and tiny randomly initialised models of the real architectures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from orthoguard.config import ModelConfig
from orthoguard.models import load_tokenizer


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (ChatML template), from the embedded model's cache."""
    return load_tokenizer(ModelConfig(name="smollm2-135m-instruct"))


def build_tiny_model(arch: str, vocab_size: int, seed: int = 0, hidden_size: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        # untied: a tied random model only ever emits one token, so its answers would all be empty
        tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if arch == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common))
    raise ValueError(arch)


@pytest.fixture(scope="session", params=["llama"])
def tiny_model_dir(request, tmp_path_factory, smollm_tokenizer):
    """A folder holding a tiny random model (real architecture, SmolLM2 tokenizer) usable as `model.name`."""
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    build_tiny_model(request.param, len(smollm_tokenizer)).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


def random_sft_dataset(vocab_size: int, n: int = 16, length: int = 12, seed: int = 0):
    """Random token sequences with the first 4 positions masked: enough to train a tiny model on."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(3, vocab_size, (length - i % 3,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * 4 + ids[4:]})
    return Dataset.from_list(rows)
