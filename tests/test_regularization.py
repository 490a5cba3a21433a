"""Regularized mode: (lambda/2) sum <theta - theta0, blue - red>^2 added to the attack loss."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file
from transformers import set_seed

from orthoguard.config import LoraSettings, TrainConfig
from orthoguard.directions import canonical_name, lowrank_norm, module_factors
from orthoguard.models import lora_config, resolve_precision
from orthoguard.regularization import RegularizerSpec, blue_red_directions
from orthoguard.training import train_lora
from tests.conftest import build_tiny_model, random_sft_dataset

VOCAB = 256
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
CFG = TrainConfig(max_steps=12, learning_rate=1e-2, batch_size=4, gradient_accumulation_steps=2, max_length=64,
                  warmup_ratio=0.0, weight_decay=0.0, lora=LORA)


def _adapter(path, seed):
    model = get_peft_model(build_tiny_model("llama", VOCAB), lora_config(LORA))
    model.save_pretrained(str(path))
    g = torch.Generator().manual_seed(seed)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    save_file({k: torch.randn(v.shape, generator=g) for k, v in tensors.items()}, str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture(scope="module")
def blue_red(tmp_path_factory):
    root = tmp_path_factory.mktemp("bluered")
    return _adapter(root / "blue", 1), _adapter(root / "red", 2)


def test_blue_red_directions_are_unit_differences(blue_red):
    blue, red = blue_red
    factors = blue_red_directions(blue, red, "lora_factors")
    b, r = load_file(str(blue / "adapter_model.safetensors")), load_file(str(red / "adapter_model.safetensors"))
    for key, u in factors.items():
        diff = b[key] - r[key]
        assert torch.allclose(u, diff / diff.norm(), atol=1e-6)
    dw = blue_red_directions(blue, red, "delta_w")
    mb, mr = module_factors(blue), module_factors(red)
    module = next(iter(mb))
    L, R = dw[f"{module}.L"], dw[f"{module}.R"]
    dense = 2.0 * (mb[module][1] @ mb[module][0] - mr[module][1] @ mr[module][0])  # alpha/r = 2
    assert torch.allclose(L @ R, dense / dense.norm(), atol=1e-5) and abs(float(lowrank_norm(L, R)) - 1) < 1e-5


def _train(tmp_path, tokenizer, name, spec):
    out = tmp_path / name
    train_lora(build_tiny_model("llama", VOCAB), tokenizer, random_sft_dataset(VOCAB), CFG, adapter_dir=out,
               log_path=tmp_path / f"{name}.json", mode=name, seed=0, precision=resolve_precision("fp32", "cpu"),
               regularizer=spec)
    return load_file(str(out / "adapter_model.safetensors"))


def _movement(adapter, initial, directions):
    return sum(float(((adapter[k] - initial[k]) * u).sum()) ** 2 for k, u in directions.items()) ** 0.5


def test_penalty_holds_the_attack_back_along_blue_minus_red(tmp_path, smollm_tokenizer, blue_red):
    directions = blue_red_directions(*blue_red, "lora_factors")
    base = build_tiny_model("llama", VOCAB)
    set_seed(0)  # as train_lora does before it wraps the model: the same LoRA initialisation
    initial_model = get_peft_model(base, lora_config(LORA))
    vanilla = _train(tmp_path, smollm_tokenizer, "vanilla", None)
    zero = _train(tmp_path, smollm_tokenizer, "zero", RegularizerSpec(directions, "lora_factors", 0.0))
    strong = _train(tmp_path, smollm_tokenizer, "strong", RegularizerSpec(directions, "lora_factors", 1e4))
    assert all(torch.allclose(zero[k], vanilla[k], atol=1e-6) for k in vanilla)  # lambda = 0 is vanilla
    # compare with the initial LoRA of the same seed: B starts at zero, A as initialised by PEFT under seed 0
    initial = {canonical_name(n): p.detach() for n, p in initial_model.named_parameters() if p.requires_grad}
    initial = {k: (torch.zeros_like(v) if ".lora_B." in k else vanilla[k] * 0 + v) for k, v in initial.items()}
    moved_vanilla = _movement(vanilla, initial, directions)
    moved_strong = _movement(strong, initial, directions)
    # Adam normalises step sizes, so even a large lambda leaves lr-sized jitter along Delta: measured 0.063 vs 0.205
    assert moved_strong < 0.5 * moved_vanilla
    log = (tmp_path / "strong.json").read_text()
    assert "reg_penalty" in log


def test_delta_w_penalty_runs(tmp_path, smollm_tokenizer, blue_red):
    directions = blue_red_directions(*blue_red, "delta_w")
    out = _train(tmp_path, smollm_tokenizer, "dw", RegularizerSpec(directions, "delta_w", 1e4, scale=2.0))
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in out.items())
