"""The seed's projection (lora_factors family): the math, the matching of directions to parameters, file formats."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file

from orthoguard.config import LoraSettings
from orthoguard.directions import canonical_name, compute_directions, load_directions, save_directions
from orthoguard.errors import DirectionError
from orthoguard.models import lora_config
from orthoguard.projection import Projector, build_constraints, project_out
from tests.conftest import build_tiny_model


def test_project_out_removes_the_component_and_keeps_the_rest():
    torch.manual_seed(0)
    g, u = torch.randn(8, 16), torch.randn(8, 16) * 3  # u deliberately not unit-norm
    p = project_out(g, u)
    assert abs(float((p * u).sum())) < 1e-4
    assert torch.allclose(project_out(p, u), p, atol=1e-5)  # idempotent
    orthogonal = project_out(torch.randn(8, 16), u)
    assert torch.allclose(project_out(orthogonal, u), orthogonal, atol=1e-5)  # already orthogonal: unchanged
    assert torch.allclose(g - p, (g * u).sum() / (u * u).sum() * u, atol=1e-5)


def test_canonical_name_strips_the_adapter_name():
    live = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert canonical_name(live) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert canonical_name(canonical_name(live)) == canonical_name(live)


def _peft(seed=0, targets=("q_proj", "v_proj"), r=4):
    model = build_tiny_model("llama", vocab_size=128, seed=seed)
    return get_peft_model(model, lora_config(LoraSettings(r=r, alpha=8, dropout=0.0, target_modules=list(targets))))


def _fake_adapter(tmp_path, peft_model, seed=1):
    torch.manual_seed(seed)
    tensors = {canonical_name(n): torch.randn_like(p) for n, p in peft_model.named_parameters() if p.requires_grad}
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] *= 0  # a zero tensor is skipped
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    return tmp_path, tensors


def test_lora_factor_directions_are_unit_norm(tmp_path):
    adapter, tensors = _fake_adapter(tmp_path, _peft())
    directions = compute_directions("lora_factors", adapter)
    assert len(directions) == len(tensors) - 1
    for name, u in directions.items():
        assert abs(float(u.norm()) - 1) < 1e-5
        assert torch.allclose(u, tensors[name] / tensors[name].norm())


def test_projector_makes_every_gradient_orthogonal(tmp_path):
    model = _peft()
    _, tensors = _fake_adapter(tmp_path, model)
    directions = {k: v / v.norm() for k, v in tensors.items() if v.norm() > 0}
    directions["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.randn(4, 32)
    projector = Projector(build_constraints(dict(model.named_parameters()), directions, "lora_factors"), at="gradient")
    ids = torch.randint(0, 128, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    for p in model.parameters():  # LoRA B starts at zero, so A's gradient is zero: give every grad some mass
        if p.requires_grad:
            p.grad = p.grad + torch.randn_like(p)
    stats = projector.before_step()
    assert 0 < stats["grad_removed_frac"] < 1
    assert len(projector.constraints) == 8
    for c in projector.constraints:
        assert abs(float((c.param.grad * c.u).sum())) < 1e-4 * float(c.param.grad.norm())


def test_direction_file_for_another_model_is_rejected(tmp_path):
    model = _peft(targets=("q_proj", "v_proj"))
    other = _peft(targets=("q_proj",))
    _, tensors = _fake_adapter(tmp_path / "other", other)
    with pytest.raises(DirectionError, match="trainable parameters without a direction"):
        build_constraints(dict(model.named_parameters()), tensors, "lora_factors")
    with pytest.raises(DirectionError, match="matches no trainable parameter"):
        build_constraints(dict(model.named_parameters()), {"model.embed.weight": torch.ones(3)}, "lora_factors")
    wrong_rank = _peft(r=8)
    _, big = _fake_adapter(tmp_path / "big", wrong_rank)
    with pytest.raises(DirectionError, match="has shape"):
        build_constraints(dict(model.named_parameters()), big, "lora_factors")
    extra = {**{canonical_name(n): torch.ones_like(p) for n, p in model.named_parameters() if p.requires_grad}, "x.lora_A.weight": torch.ones(1)}
    with pytest.raises(DirectionError, match="directions without a trainable parameter"):
        build_constraints(dict(model.named_parameters()), extra, "lora_factors")


def test_save_load_round_trip_and_legacy_pt(tmp_path):
    directions = {"a.lora_A.weight": torch.randn(4, 8), "a.lora_B.weight": torch.randn(8, 4)}
    save_directions(tmp_path / "d.safetensors", directions, {"family": "lora_factors", "base_model": "m"})
    loaded, meta = load_directions(tmp_path / "d.safetensors")
    assert meta["family"] == "lora_factors" and meta["base_model"] == "m"
    assert all(torch.equal(loaded[k], directions[k]) for k in directions)

    legacy = {"base_model.model.a.lora_A.default.weight": torch.randn(4, 8)}
    torch.save(legacy, tmp_path / "seed.pt")
    loaded, meta = load_directions(tmp_path / "seed.pt")
    assert list(loaded) == ["base_model.model.a.lora_A.weight"] and meta["legacy"] == "pt"


def test_unreadable_direction_files_name_the_path(tmp_path):
    with pytest.raises(DirectionError, match="not found"):
        load_directions(tmp_path / "missing.safetensors")
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(DirectionError, match="truncated.safetensors"):
        load_directions(bad)

    import collections

    torch.save({"x": collections.Counter("abc")}, tmp_path / "pickle.pt")  # arbitrary objects are refused by weights_only
    with pytest.raises(DirectionError, match="pickle.pt"):
        load_directions(tmp_path / "pickle.pt")
