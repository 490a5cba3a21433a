"""The family registry: adding a direction family is one class and one registration call.

A toy family, "toy", constrains each module's LoRA B along its first output coordinate (B[0, :] keeps its
initial value, so row 0 of dW = (alpha/r) B A never moves). It is built from an adapter, trained against with
the update projection, accepted by configs while registered, and forgotten once unregistered.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file
from transformers import TrainerCallback

from orthoguard.cli import weight_space_families
from orthoguard.config import LoraSettings, TrainConfig, load_config
from orthoguard.directions import canonical_name, compute_directions, module_factors, random_like
from orthoguard.errors import ConfigError, DirectionError
from orthoguard.families import FAMILIES, Family, family_names, get_family, register_family, unregister_family
from orthoguard.families.activation import RESIDUAL_WRITERS, writes_residual
from orthoguard.families.lora_factors import random_unit_tensors
from orthoguard.models import lora_config, resolve_precision
from orthoguard.projection import lora_modules
from orthoguard.regularization import blue_red_directions
from orthoguard.training import ProjectionSpec, train_lora
from tests.conftest import build_tiny_model, random_sft_dataset

VOCAB = 256
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
CFG = TrainConfig(max_steps=4, learning_rate=1e-2, batch_size=4, max_length=64, warmup_ratio=0.0, lora=LORA)


@dataclass
class FirstRowConstraint:
    """e^T (B - B0) = 0 for one module's B, e a unit vector of its output space."""

    B: torch.nn.Parameter
    e: torch.Tensor  # d_out x 1
    initial: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.initial = self.B.detach().float().clone()

    def _remove(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.e @ (self.e.T @ x)

    def project_gradient_(self) -> None:
        if self.B.grad is not None:
            self.B.grad.copy_(self._remove(self.B.grad.float()))

    def project_update_(self) -> None:
        self.B.data.copy_(self.initial + self._remove(self.B.detach().float() - self.initial))

    def params(self):
        return [self.B]


class FirstRow(Family):
    name = "toy"

    def build(self, factors, settings):
        return {f"{m}.row": torch.eye(B.shape[0])[:, :1].contiguous() for m, (_, B) in factors.items()}

    def random_same_rank(self, directions, seed):  # a family may reuse another's pieces
        return random_unit_tensors(directions, seed)

    def constraints(self, named_params, directions):
        modules = lora_modules(named_params)
        return [FirstRowConstraint(modules[k.removesuffix(".row")]["B"], e) for k, e in sorted(directions.items())]


@contextmanager
def registered(family: Family):
    saved = dict(FAMILIES)
    register_family(family)
    try:
        yield family
    finally:
        unregister_family(family.name)
        assert FAMILIES == saved


@pytest.fixture()
def toy():
    with registered(FirstRow()) as family:
        yield family


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A refusal-like adapter with random, non-zero A and B for the tiny model."""
    path = tmp_path_factory.mktemp("ref")
    model = get_peft_model(build_tiny_model("llama", VOCAB), lora_config(LORA))
    model.save_pretrained(str(path))
    g = torch.Generator().manual_seed(5)
    tensors = {canonical_name(n): torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


class Initial(TrainerCallback):
    def __init__(self):
        self.tensors = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.tensors = {canonical_name(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_registered_toy_family_is_built_trained_against_and_holds(tmp_path, smollm_tokenizer, adapter, toy):
    directions = compute_directions("toy", adapter)
    assert set(directions) == {f"{m}.row" for m in module_factors(adapter)}
    control = random_like(directions, "toy", seed=0)
    assert {k: v.shape for k, v in control.items()} == {k: v.shape for k, v in directions.items()}

    initial = Initial()
    train_lora(build_tiny_model("llama", VOCAB), smollm_tokenizer, random_sft_dataset(VOCAB), CFG,
               adapter_dir=tmp_path / "toy", log_path=tmp_path / "toy.json", mode="toy", seed=0,
               precision=resolve_precision("fp32", "cpu"), projection=ProjectionSpec(directions, "toy", "update"),
               callbacks=[initial])
    for module, (_, B) in module_factors(tmp_path / "toy").items():
        B0 = initial.tensors[f"{module}.lora_B.weight"]
        assert torch.allclose(B[0], B0[0], atol=1e-7), f"{module}: the first output row moved"
        assert float((B[1:] - B0[1:]).norm()) > 0, f"{module}: the attack did not learn"


def test_a_registered_family_is_a_config_and_cli_choice_until_unregistered(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("attack:\n  variants: [{name: vanilla}, {name: toy, mode: orthogonal, directions: toy}]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack:\n  variants: [{name: x, mode: orthogonal, directions: nope}]\n")
    with registered(FirstRow()):
        assert load_config(path).attack.variants[1].directions == "toy"
        assert "toy" in weight_space_families()
        with pytest.raises(ConfigError, match=r"unknown direction family 'nope' \(known: lora_factors, .*toy\)"):
            load_config(bad)
    with pytest.raises(ConfigError, match="unknown direction family 'toy'"):
        load_config(path)
    with pytest.raises(DirectionError, match="unknown direction family 'toy'"):
        get_family("toy")


def test_regularized_mode_is_a_capability_of_the_family(tmp_path, adapter, toy):
    assert family_names(regularizable=True) == ["lora_factors", "delta_w"]
    with pytest.raises(DirectionError, match=r"regularized mode supports \('lora_factors', 'delta_w'\), not 'toy'"):
        blue_red_directions(adapter, adapter, "toy")
    path = tmp_path / "reg.yaml"
    path.write_text("attack:\n  variants: [{name: r, mode: regularized, directions: toy}]\n")
    with pytest.raises(ConfigError, match="regularized mode takes directions lora_factors or delta_w"):
        load_config(path)


def test_the_built_in_families_and_what_they_need():
    assert family_names() == ["lora_factors", "delta_w", "subspace", "activation"]
    assert weight_space_families() == ["lora_factors", "delta_w", "subspace"]  # activation needs a model
    assert get_family("matched").is_control and "matched" not in family_names()
    assert RESIDUAL_WRITERS == ("o_proj", "down_proj")
    assert writes_residual("model.layers.0.mlp.down_proj") and not writes_residual("model.layers.0.mlp.up_proj")
    with pytest.raises(DirectionError, match=r"unknown direction family 'activation' \(known: delta_w, lora_factors, subspace\)"):
        compute_directions("activation", "unused")
