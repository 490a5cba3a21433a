"""Each direction family's promise, checked on the weights after real AdamW training of a tiny model.

`update` must hold the constraint to float precision after 50 AdamW steps with weight decay, gradient
accumulation and clipping; `gradient` (the seed's placement) is measured too, and drifts visibly.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file

from orthoguard.config import DirectionsConfig, LoraSettings, TrainConfig
from orthoguard.directions import (activation_directions, canonical_name, compute_directions, lowrank_norm,
                                   module_factors, random_like)
from orthoguard.models import lora_config, resolve_precision
from orthoguard.training import ProjectionSpec, train_lora
from tests.conftest import build_tiny_model, random_sft_dataset

VOCAB = 256
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
CFG = TrainConfig(max_steps=50, learning_rate=1e-2, batch_size=4, gradient_accumulation_steps=2, max_length=64,
                  warmup_ratio=0.0, weight_decay=0.01, max_grad_norm=1.0, lora=LORA)
SETTINGS = DirectionsConfig(subspace_k=2)


@pytest.fixture(scope="module")
def reference_adapter(tmp_path_factory):
    """A 'refusal' adapter with random, non-zero A and B (rank 4) for the tiny model."""
    path = tmp_path_factory.mktemp("ref")
    model = get_peft_model(build_tiny_model("llama", VOCAB), lora_config(LORA))
    g = torch.Generator().manual_seed(5)
    tensors = {canonical_name(n): torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def _directions(family: str, ref) -> dict:
    if family == "activation":
        shapes = {m: B.shape[0] for m, (_, B) in module_factors(ref).items()}
        return activation_directions(torch.randn(32, generator=torch.Generator().manual_seed(3)), shapes)
    return compute_directions(family, ref, SETTINGS)


def _train(tmp_path, tokenizer, family, at, directions, precision="fp32"):
    initial = {}
    from transformers import TrainerCallback

    class Initial(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            initial.update({canonical_name(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    out = tmp_path / f"{family}-{at}"
    train_lora(build_tiny_model("llama", VOCAB), tokenizer, random_sft_dataset(VOCAB, n=16), CFG, adapter_dir=out,
               log_path=tmp_path / f"{family}-{at}.json", mode=family, seed=0, precision=resolve_precision(precision, "cpu"),
               projection=ProjectionSpec(directions, family, at), callbacks=[Initial()])
    return module_factors(out), initial


def violation(family: str, directions: dict, factors: dict, initial: dict) -> float:
    """The largest relative violation of the family's constraint over all constrained modules/tensors."""
    worst = 0.0
    for module, (A, B) in factors.items():
        if family == "lora_factors":
            for which, p in (("A", A), ("B", B)):
                name = f"{module}.lora_{which}.weight"
                change = p - initial[name]
                worst = max(worst, abs(float((change * directions[name]).sum())) / float(change.norm()))
        elif family == "delta_w":
            L, R = directions[f"{module}.L"], directions[f"{module}.R"]
            inner = float(torch.trace((B.T @ L) @ (R @ A.T)))
            worst = max(worst, abs(inner) / float(lowrank_norm(B, A)))
        elif f"{module}.U" in directions:  # subspace, activation
            P = directions[f"{module}.U"].T @ B
            worst = max(worst, float(lowrank_norm(P, A)) / float(lowrank_norm(B, A)))
    return worst


@pytest.mark.parametrize("family", ["lora_factors", "delta_w", "subspace", "activation"])
def test_update_projection_holds_exactly_and_gradient_projection_drifts(tmp_path, smollm_tokenizer, reference_adapter, family):
    directions = _directions(family, reference_adapter)
    drift = {}
    for at in ("update", "gradient"):
        factors, initial = _train(tmp_path, smollm_tokenizer, family, at, directions)
        assert all(float(B.norm()) > 0 for _, B in factors.values())  # the attack did learn
        drift[at] = violation(family, directions, factors, initial)
    print(f"{family}: relative violation after 50 AdamW steps: update {drift['update']:.2e}, gradient {drift['gradient']:.2e}")
    assert drift["update"] < 1e-5
    # the seed's placement lets AdamW's scaling, momentum and weight decay bring the component back
    assert drift["gradient"] > 100 * max(drift["update"], 1e-9)


def test_update_projection_holds_under_bf16_autocast(tmp_path, smollm_tokenizer, reference_adapter):
    directions = _directions("subspace", reference_adapter)
    factors, initial = _train(tmp_path, smollm_tokenizer, "subspace", "update", directions, precision="bf16")
    assert violation("subspace", directions, factors, initial) < 1e-5


def test_subspace_k_and_energy(reference_adapter):
    fixed = compute_directions("subspace", reference_adapter, DirectionsConfig(subspace_k=3))
    assert all(U.shape[1] == 3 for U in fixed.values())
    for U in fixed.values():
        assert torch.allclose(U.T @ U, torch.eye(3), atol=1e-5)
    full = compute_directions("subspace", reference_adapter, DirectionsConfig(subspace_energy=1.0))
    assert all(U.shape[1] == 4 for U in full.values())  # rank of B A


@pytest.mark.parametrize("family", ["lora_factors", "delta_w", "subspace", "activation"])
def test_random_control_matches_shapes_not_content(reference_adapter, family):
    real = _directions(family, reference_adapter)
    control = random_like(real, family, seed=0)
    assert set(control) == set(real)
    assert all(control[k].shape == real[k].shape for k in real)
    assert not any(torch.allclose(control[k], real[k]) for k in real)
    assert torch.equal(random_like(real, family, seed=0)[next(iter(real))], control[next(iter(real))])
