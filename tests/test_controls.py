"""Controls that hold: independent LoRA initialisations, restriction-matched random controls, a probe split of its
own, and a warm-up that never trains at a zero learning rate."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from orthoguard.config import DirectionsConfig, LoraSettings, TrainConfig
from orthoguard.directions import canonical_name, matched_random_subspaces, module_factors, subspace_directions
from orthoguard.errors import DataError
from orthoguard.models import resolve_precision
from orthoguard.pipeline import hold_out_probes, mean_removed_share
from orthoguard.seeding import derive_seed, lora_init_seed
from orthoguard.training import ProjectionSpec, train_lora, warmup_linear_lambda
from tests.conftest import build_tiny_model, random_sft_dataset

VOCAB = 256
FP32 = resolve_precision("fp32", "cpu")
# wide enough that two independent LoRA A initialisations (8 x 256 per module) have |cos| far below 0.1
LORA = LoraSettings(r=8, alpha=16, dropout=0.0)


def _model():
    return build_tiny_model("llama", VOCAB, hidden_size=256)


class InitialA(TrainerCallback):
    """The LoRA A tensors as training starts (B starts at zero, so A is the whole initialisation)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.tensors = {canonical_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def _train(tmp_path, name, tokenizer, cfg, init_seed, seed=0, dataset=None, projection=None, callbacks=()):
    return train_lora(_model(), tokenizer, dataset if dataset is not None else random_sft_dataset(VOCAB, n=8), cfg,
                      adapter_dir=tmp_path / name, log_path=tmp_path / f"{name}.json", mode=name, seed=seed,
                      precision=FP32, init_seed=init_seed, projection=projection, callbacks=list(callbacks))


def test_seed_streams_are_distinct_and_reproducible():
    assert derive_seed(0, "a") == derive_seed(0, "a")
    assert len({derive_seed(s, r) for s in (0, 1) for r in ("a", "b")}) == 4
    assert lora_init_seed(0, "refusal") != lora_init_seed(0, "attack") != lora_init_seed(0, "blue")


@pytest.mark.parametrize("seed", [0, 1])
def test_attack_lora_starts_independent_of_the_refusal_lora_and_equal_across_variants(tmp_path, smollm_tokenizer, seed):
    cfg = TrainConfig(max_steps=1, batch_size=4, learning_rate=1e-3, lora=LORA)
    refusal, vanilla, defended = InitialA(), InitialA(), InitialA()
    _train(tmp_path, "refusal", smollm_tokenizer, cfg, lora_init_seed(seed, "refusal"), seed, callbacks=[refusal])
    _train(tmp_path, "vanilla", smollm_tokenizer, cfg, lora_init_seed(seed, "attack"), seed, callbacks=[vanilla])
    # another variant of the same run: a projection, other data; it starts from the same initialisation all the same
    subspaces = {f"{m}.U": torch.linalg.qr(torch.randn(B.shape[0], 2))[0] for m, (_, B) in module_factors(tmp_path / "refusal").items()}
    _train(tmp_path, "orthogonal", smollm_tokenizer, cfg, lora_init_seed(seed, "attack"), seed,
           dataset=random_sft_dataset(VOCAB, n=8, seed=5), callbacks=[defended],
           projection=ProjectionSpec(subspaces, "subspace", "update"))
    assert set(refusal.tensors) == set(vanilla.tensors) and len(refusal.tensors) == 14
    for name, a_ref in refusal.tensors.items():
        a_att = vanilla.tensors[name]
        cos = float((a_ref.flatten() @ a_att.flatten()) / (a_ref.norm() * a_att.norm()))
        assert abs(cos) < 0.1, f"{name}: cos(A_ref_init, A_attack_init) = {cos:.3f}"
        assert torch.equal(a_att, defended.tensors[name]), f"{name}: variants start from different initialisations"
    log = json.loads((tmp_path / "vanilla.json").read_text())
    assert log["init_seed"] == lora_init_seed(seed, "attack")


def test_matched_subspaces_remove_the_target_share_of_any_update():
    shapes = {"m.lora_B.weight": [576, 16], "m.lora_A.weight": [16, 576], "n.lora_B.weight": [192, 16]}
    target = {"m.lora_B.weight": 0.09, "m.lora_A.weight": 0.25, "n.lora_B.weight": 0.0}
    dirs = matched_random_subspaces({n: {"shape": shapes[n], "removed_energy_share": s} for n, s in target.items()}, seed=3)
    # every tensor the defence constrained is listed (k = 0: measured, left free), so shares compare like with like
    assert set(dirs) == {"m.lora_B.weight.left", "m.lora_A.weight.right", "n.lora_B.weight.left"}
    assert dirs["m.lora_B.weight.left"].shape == (576, round(0.09 * 576)) and dirs["n.lora_B.weight.left"].shape == (192, 0)
    g = torch.Generator().manual_seed(0)
    for key, Q in dirs.items():
        if Q.shape[1] == 0:
            continue
        name, side = key.rsplit(".", 1)
        update = torch.randn(*shapes[name], generator=g) * torch.rand(*shapes[name], generator=g)  # not isotropic
        removed = Q @ (Q.T @ update) if side == "left" else (update @ Q) @ Q.T
        share = float(removed.pow(2).sum() / update.pow(2).sum())
        assert share == pytest.approx(target[name], rel=0.2)
        assert torch.allclose(Q.T @ Q, torch.eye(Q.shape[1]), atol=1e-5)


def test_matched_sizes_reach_the_energy_target_when_one_dimension_is_more_than_a_tensor_share():
    """Many wide tensors, each with a share below one dimension: rounding alone would give every one k = 0."""
    tensors = {f"t{i}.lora_A.weight": {"shape": [16, 576], "removed_energy_share": 0.0005, "energy": 1.0 + i % 3}
               for i in range(40)}
    dirs = matched_random_subspaces(tensors, seed=0, target_share=0.03)
    weights = {n: t["energy"] / sum(t["energy"] for t in tensors.values()) for n, t in tensors.items()}
    expected = sum(dirs[f"{n}.right"].shape[1] / 576 * w for n, w in weights.items())
    assert expected == pytest.approx(0.03**2, rel=0.05)
    assert sum(1 for q in dirs.values() if q.shape[1]) < len(tensors)  # only some tensors get a dimension


def test_a_matched_control_removes_the_share_its_defence_removed(tmp_path, smollm_tokenizer):
    """The defence removes far more of the update than a same-rank random subspace; the matched control is sized
    from the defence's log and removes the same share (within 10%), on the same data."""
    data = random_sft_dataset(VOCAB, n=16, seed=1)
    cfg = TrainConfig(max_steps=6, batch_size=4, learning_rate=5e-3, lora=LORA)
    _train(tmp_path, "refusal", smollm_tokenizer, cfg, lora_init_seed(0, "refusal"), dataset=data)
    subspace = subspace_directions(module_factors(tmp_path / "refusal"), DirectionsConfig(subspace_energy=0.9))
    attack = lora_init_seed(0, "attack")
    _train(tmp_path, "defence", smollm_tokenizer, cfg, attack, dataset=data, projection=ProjectionSpec(subspace, "subspace", "update"))
    defence = json.loads((tmp_path / "defence.json").read_text())
    random_same_rank = {k: torch.linalg.qr(torch.randn(*U.shape))[0] for k, U in subspace.items()}
    _train(tmp_path, "same_rank", smollm_tokenizer, cfg, attack, dataset=data,
           projection=ProjectionSpec(random_same_rank, "subspace", "update"))
    matched_dirs = matched_random_subspaces(defence["projection"]["tensors"], seed=derive_seed(0, "matched:x"),
                                            target_share=mean_removed_share(defence))
    _train(tmp_path, "matched", smollm_tokenizer, cfg, attack, dataset=data, projection=ProjectionSpec(matched_dirs, "matched", "update"))

    def mean_share(name):
        steps = json.loads((tmp_path / f"{name}.json").read_text())["losses"]
        return sum(s["update_removed_frac"] for s in steps) / len(steps)

    defended, same_rank, matched = mean_share("defence"), mean_share("same_rank"), mean_share("matched")
    assert defended > 1.5 * same_rank  # the confound: a same-rank control constrains much less
    assert matched == pytest.approx(defended, rel=0.10)


def test_probe_questions_are_held_apart_from_the_test_questions():
    test, probe = hold_out_probes([f"q{i}" for i in range(10)], 3, "train[90%:]")
    assert probe == ["q7", "q8", "q9"] and test == [f"q{i}" for i in range(7)]
    assert hold_out_probes(["a", "b"], 0, "x") == (["a", "b"], [])
    with pytest.raises(DataError, match="attack.probe_prompts"):
        hold_out_probes(["a", "b", "c"], 3, "train[90%:]")


def test_warmup_never_gives_a_zero_learning_rate():
    assert [warmup_linear_lambda(s, 1, 10) for s in range(10)][:2] == [0.5, 1.0]
    assert all(warmup_linear_lambda(s, w, t) > 0 for t in (1, 2, 10, 50) for w in (0, 1, 3) if w < t for s in range(t))


class StepChanges(TrainerCallback):
    """Whether each optimizer step changed the trainable parameters."""

    def __init__(self):
        self.changed: list[bool] = []
        self._before: list[torch.Tensor] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._before = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(after, self._before)))


def test_every_configured_step_trains(tmp_path, smollm_tokenizer):
    """10 steps with warmup_ratio 0.05 (one warm-up step): the Trainer's linear schedule spends step 1 at lr 0."""
    steps = StepChanges()
    cfg = TrainConfig(max_steps=10, batch_size=4, learning_rate=1e-3, warmup_ratio=0.05, lora=LORA)
    _train(tmp_path, "x", smollm_tokenizer, cfg, 0, dataset=random_sft_dataset(VOCAB, n=8), callbacks=[steps])
    log = json.loads((tmp_path / "x.json").read_text())
    rates = [r["learning_rate"] for r in log["losses"]]
    assert steps.changed == [True] * 10
    assert len(rates) == 10 and all(r > 0 for r in rates) and rates[0] == pytest.approx(0.5e-3)
