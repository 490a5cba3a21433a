"""AsFT (defences/asft.py): the penalty lambda * sum ||(I - C) dW||_F^2 against its dense formula, its gradient
(autograd against the analytic gradient and finite differences), the mode's settings, and trained attacks."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from orthoguard.config import ExperimentConfig, LoraSettings, TrainConfig
from orthoguard.defences import asft
from orthoguard.defences.alignment import Alignment, alignment_from_adapter, pair_modules
from orthoguard.defences.hooks import AsFTHook
from orthoguard.directions import canonical_name
from orthoguard.errors import DataError
from orthoguard.models import resolve_precision
from orthoguard.modes import get_mode
from orthoguard.rundir import TrainLog
from orthoguard.training import RegularizedTrainer, train_lora
from tests.conftest import build_tiny_model, random_sft_dataset
from tests.test_safelora import _dense_c, _live_attack, _random_adapter

VOCAB = 256
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)  # alpha / r = 2
CFG = TrainConfig(max_steps=8, learning_rate=1e-2, batch_size=4, gradient_accumulation_steps=2, max_length=64,
                  warmup_ratio=0.0, weight_decay=0.0, lora=LORA)
FP32 = resolve_precision("fp32", "cpu")


@pytest.fixture(scope="module")
def refusal(tmp_path_factory):
    return _random_adapter(tmp_path_factory.mktemp("refusal"), seed=7, std=0.2)


def _dense_penalty(pairs, strength, scale):
    total = 0.0
    for p in pairs.values():
        C = _dense_c(p["V"].dense_v().to(p["B"]))
        I = torch.eye(C.shape[0], dtype=C.dtype)
        total = total + torch.norm((I - C) @ (scale * p["B"] @ p["A"]), p="fro") ** 2
    return strength * total


def test_the_penalty_is_the_dense_formula(refusal):
    alignment = alignment_from_adapter(refusal)
    pairs = pair_modules(dict(_live_attack(2).named_parameters()), alignment)
    got = asft.penalty_fn(pairs, strength=0.7, scale=2.0)()
    want = _dense_penalty(pairs, 0.7, 2.0)
    assert got.requires_grad and math.isclose(float(got.detach()), float(want), rel_tol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside the Trainer under bf16: still computed in fp32
        inside = asft.penalty_fn(pairs, strength=0.7, scale=2.0)()
    assert inside.dtype == torch.float32 and math.isclose(float(inside.detach()), float(want), rel_tol=1e-4)
    assert float(asft.penalty_fn(pairs, 0.0, 2.0)()) == 0.0
    assert math.isclose(float(asft.penalty_fn(pairs, 0.7, 1.0)()), float(want) / 4, rel_tol=1e-4)  # scale^2
    # with V in its own column space the update is charged only what C does not reproduce: (1 - sigma^2/||V||)^2
    V = torch.diag(torch.tensor([3.0, 0.0]))
    a = Alignment(V, torch.eye(2), 3.0)  # C = 3 e1 e1^T
    e1 = torch.tensor([[1.0], [0.0]])
    assert math.isclose(float(asft.off_basin_energy(e1.T, e1, a, 1.0)), 4.0, rel_tol=1e-6)  # (1 - 3)^2
    assert math.isclose(float(asft.off_basin_energy(e1.T, torch.tensor([[0.0], [1.0]]), a, 1.0)), 1.0, rel_tol=1e-6)


def test_the_gradient_is_the_analytic_one(refusal):
    alignment = alignment_from_adapter(refusal)
    pairs = pair_modules(dict(_live_attack(3).named_parameters()), alignment)
    lam, s = 0.5, 2.0
    penalty = asft.penalty_fn(pairs, lam, s)()
    params = [t for p in pairs.values() for t in (p["A"], p["B"])]
    grads = torch.autograd.grad(penalty, params)
    for (m, p), gA, gB in zip(pairs.items(), grads[0::2], grads[1::2]):
        A, B = p["A"].detach(), p["B"].detach()
        M = torch.eye(B.shape[0]) - _dense_c(p["V"].dense_v())
        MtM = M.T @ M
        # d/dB lambda ||M s B A||^2 = 2 lambda s^2 M^T M B A A^T;  d/dA = 2 lambda s^2 B^T M^T M B A
        assert torch.allclose(gB, 2 * lam * s**2 * MtM @ B @ A @ A.T, rtol=1e-3, atol=1e-5), m
        assert torch.allclose(gA, 2 * lam * s**2 * B.T @ MtM @ B @ A, rtol=1e-3, atol=1e-5), m


def test_the_gradient_against_finite_differences():
    g = torch.Generator().manual_seed(0)
    L, R = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    V = Alignment(L, R, float(torch.norm(L @ R)))
    A = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda A, B: asft.off_basin_energy(A, B, V, 2.0), (A, B))
    # and the value is the dense one
    C = (L @ R) @ (L @ R).T / torch.norm(L @ R)
    dense = torch.norm((torch.eye(6, dtype=torch.float64) - C) @ (2.0 * B @ A)) ** 2
    assert torch.allclose(asft.off_basin_energy(A, B, V, 2.0), dense)


def test_the_mode_settings_and_its_controls(refusal):
    cfg = ExperimentConfig(attack={"variants": [
        {"name": "vanilla"}, {"name": "asft", "mode": "asft", "reg_lambda": 3.0},
        {"name": "asft-random", "mode": "asft", "random": "same_rank", "reg_lambda": 3.0},
        {"name": "asft-off", "mode": "asft", "random": "same_rank", "controls": "asft", "reg_lambda": 1.0}]})
    assert cfg.attack.controls_of(cfg.directions.kind) == {"asft": {"same_rank": "asft-random"}}
    run = SimpleNamespace(cfg=cfg, adapter=lambda name: refusal)
    mode = get_mode("asft")
    hook, control = (mode.hooks(run, v, CFG)[0] for v in cfg.attack.variants[1:3])
    assert hook.trainer_class is RegularizedTrainer and hook.strength == 3.0 and hook.scale == 2.0
    m = next(iter(hook.alignment))
    assert not torch.allclose(hook.alignment[m].L, control.alignment[m].L)
    assert math.isclose(hook.alignment[m].norm, control.alignment[m].norm, rel_tol=1e-5)
    with pytest.raises(DataError, match="reg_lambda is 3.0 there and 1.0 here"):
        mode.hooks(run, cfg.attack.variants[3], CFG)
    assert mode.describe(cfg.attack.variants[1].model_dump(mode="json")) == \
        "attack, AsFT (penalty off the alignment direction, lambda 3.0)"
    with pytest.raises(ValueError, match="same_rank controls, not matched"):
        ExperimentConfig(attack={"variants": [{"name": "a", "mode": "asft"}, {"name": "b", "mode": "asft", "random": "matched"}]})


class Initial(TrainerCallback):
    def __init__(self):
        self.tensors = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.tensors = {canonical_name(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _train(tmp_path, tokenizer, name, hooks=()):
    initial = Initial()
    train_lora(build_tiny_model("llama", VOCAB), tokenizer, random_sft_dataset(VOCAB), CFG, adapter_dir=tmp_path / name,
               log_path=tmp_path / f"{name}.json", mode=name, seed=0, precision=FP32, hooks=list(hooks), callbacks=[initial])
    return load_file(str(tmp_path / name / "adapter_model.safetensors")), initial.tensors


def _penalty_of(adapter, alignment, lam, scale):
    total = 0.0
    for m, V in alignment.items():
        A, B = adapter[f"{m}.lora_A.weight"], adapter[f"{m}.lora_B.weight"]
        total += float(asft.off_basin_energy(A, B, V, scale))
    return lam * total


def test_a_trained_attack_is_held_in_the_basin(tmp_path, smollm_tokenizer, refusal):
    alignment = alignment_from_adapter(refusal)
    vanilla, _ = _train(tmp_path, smollm_tokenizer, "vanilla")
    zero, _ = _train(tmp_path, smollm_tokenizer, "zero", [AsFTHook(alignment, 0.0, 2.0)])
    strong, initial = _train(tmp_path, smollm_tokenizer, "strong", [AsFTHook(alignment, 100.0, 2.0)])
    assert all(torch.allclose(zero[k], vanilla[k], atol=1e-6) for k in vanilla)  # lambda = 0 is vanilla
    for name, tensor in strong.items():  # every LoRA tensor still learns (TRL's check)
        assert not torch.allclose(tensor, initial[name]), f"{name} did not change"
    off_vanilla, off_strong = _penalty_of(vanilla, alignment, 1.0, 2.0), _penalty_of(strong, alignment, 1.0, 2.0)
    assert off_strong < 0.5 * off_vanilla, (off_strong, off_vanilla)

    log = json.loads((tmp_path / "strong.json").read_text())
    TrainLog.parse(log, tmp_path / "strong.json")
    assert all("reg_penalty" in r for r in log["losses"]) and log["losses"][0]["reg_penalty"] == 0.0  # B starts at 0
    record = log["defence"]
    assert record["name"] == "asft" and record["lambda"] == 100.0 and record["scale"] == 2.0
    assert set(record["residual_ratio"]) == set(alignment)
