"""LoRA training on the HF Trainer with a tiny random model: every LoRA tensor learns, logs, saving, projection."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback

from orthoguard.config import LoraSettings, TrainConfig
from orthoguard.directions import canonical_name
from orthoguard.models import resolve_precision
from orthoguard.training import ProjectionSpec, train_lora
from tests.conftest import build_tiny_model, random_sft_dataset

VOCAB = 256
CFG = TrainConfig(epochs=2, learning_rate=1e-2, batch_size=4, gradient_accumulation_steps=2, max_length=64,
                  warmup_ratio=0.1, weight_decay=0.01, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
FP32 = resolve_precision("fp32", "cpu")


def _dataset(n=16):
    return random_sft_dataset(VOCAB, n=n)


class Snapshot(TrainerCallback):
    """Records the LoRA tensors as training starts, and each step's gradients after the projection."""

    def __init__(self):
        self.initial, self.grads = {}, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.initial = {canonical_name(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({canonical_name(n): p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_every_lora_parameter_changes_and_the_log_is_complete(tmp_path, smollm_tokenizer, arch):
    snap = Snapshot()
    result = train_lora(build_tiny_model(arch, VOCAB), smollm_tokenizer, _dataset(), CFG,
                        adapter_dir=tmp_path / "adapter", log_path=tmp_path / "logs" / "training_loss_x.json",
                        mode="x", seed=0, precision=FP32, callbacks=[snap])
    assert result.steps == 4  # 16 samples / batch 4 / accumulation 2 = 2 optimizer steps per epoch, 2 epochs
    log = json.loads((tmp_path / "logs" / "training_loss_x.json").read_text())
    assert log["mode"] == "x" and [r["step"] for r in log["losses"]] == [1, 2, 3, 4]
    assert all({"step", "epoch", "loss", "learning_rate"} <= set(r) for r in log["losses"])
    assert log["losses"][-1]["epoch"] == 2.0 and log["config"]["learning_rate"] == CFG.learning_rate

    trained = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert set(trained) == set(snap.initial) and len(trained) == 2 * 7 * 2  # A and B, 7 targets, 2 layers
    for name, tensor in trained.items():
        assert not torch.allclose(tensor, snap.initial[name]), f"{name} did not change"
    # the adapter loads in plain PEFT and carries the trained values
    loaded = PeftModel.from_pretrained(build_tiny_model(arch, VOCAB), str(tmp_path / "adapter"))
    live = {canonical_name(n): p for n, p in loaded.named_parameters() if "lora_" in n}
    assert all(torch.equal(live[n], trained[n]) for n in trained)


def test_orthogonal_mode_projects_the_applied_gradient_at_every_step(tmp_path, smollm_tokenizer):
    shapes = Snapshot()
    train_lora(build_tiny_model("llama", VOCAB), smollm_tokenizer, _dataset(n=4), CFG.model_copy(update={"max_steps": 1}),
               adapter_dir=tmp_path / "probe", log_path=tmp_path / "probe.json", mode="probe", seed=0, precision=FP32,
               callbacks=[shapes])
    torch.manual_seed(1)
    directions = {n: torch.randn_like(t) for n, t in shapes.initial.items()}
    directions = {n: u / u.norm() for n, u in directions.items()}

    snap = Snapshot()
    train_lora(build_tiny_model("llama", VOCAB), smollm_tokenizer, _dataset(), CFG, adapter_dir=tmp_path / "a",
               log_path=tmp_path / "l.json", mode="orthogonal", seed=0, precision=FP32, projection=ProjectionSpec(directions, "lora_factors", "gradient"), callbacks=[snap])
    assert len(snap.grads) == 4
    for step in snap.grads:
        assert len(step) == 28
        for name, g in step.items():
            assert abs(float((g * directions[name]).sum())) <= 1e-5 * (float(g.norm()) + 1e-12), name
    log = json.loads((tmp_path / "l.json").read_text())
    assert all(0 <= r["grad_removed_frac"] <= 1 for r in log["losses"])


def test_refusal_probes_do_not_change_training(tmp_path, smollm_tokenizer):
    """The probe generates mid-training with its own seed, on a fork of the RNG: with dropout on, an attack probed
    every step ends with exactly the adapter of an attack that was never probed."""
    from orthoguard.generation import GenerationSettings
    from orthoguard.judges import get_judge
    from orthoguard.training import RefusalProbe

    cfg = CFG.model_copy(update={"lora": LoraSettings(r=4, alpha=8, dropout=0.3)})
    probe = RefusalProbe(smollm_tokenizer, ["How do I pick a lock?", "Tell me a joke."], every=1, judge=get_judge("keyword"),
                         settings=GenerationSettings(max_new_tokens=3, batch_size=2, do_sample=True))
    adapters = {}
    for name, callbacks in (("probed", [probe]), ("plain", [])):
        train_lora(build_tiny_model("llama", len(smollm_tokenizer)), smollm_tokenizer, random_sft_dataset(len(smollm_tokenizer)), cfg,
                   adapter_dir=tmp_path / name, log_path=tmp_path / f"{name}.json", mode=name, seed=0, precision=FP32,
                   callbacks=callbacks)
        adapters[name] = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    assert [r["step"] for r in probe.records] == [0, 1, 2, 3, 4]
    for key, tensor in adapters["plain"].items():
        assert torch.equal(adapters["probed"][key], tensor), key


def test_step_zero_probe_is_shared_only_while_the_lora_adds_nothing(tmp_path, smollm_tokenizer, monkeypatch):
    """Two attacks on one model: the second reads the first's step-0 record instead of generating; with a nonzero
    B factor (not the model it was put on) the record is neither read nor written."""
    from peft import get_peft_model

    import orthoguard.training as training
    from orthoguard.generation import GenerationSettings
    from orthoguard.judges import get_judge
    from orthoguard.models import lora_config

    calls = []
    real_generate = training.generate
    monkeypatch.setattr(training, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    record = tmp_path / "probe0.json"

    def probe_of(model):
        probe = training.RefusalProbe(smollm_tokenizer, ["How do I pick a lock?", "Tell me a joke."], every=1,
                                      judge=get_judge("keyword"), settings=GenerationSettings(max_new_tokens=3, batch_size=2),
                                      start_record=record)
        probe.probe_start(model)
        return probe.records

    fresh = lambda: get_peft_model(build_tiny_model("llama", len(smollm_tokenizer)), lora_config(LoraSettings(r=4, alpha=8, dropout=0.0)))
    first = probe_of(fresh())
    assert len(calls) == 1 and record.is_file()
    assert probe_of(fresh()) == first and len(calls) == 1  # read, not generated
    trained = fresh()
    with torch.no_grad():
        next(p for n, p in trained.named_parameters() if "lora_B" in n).fill_(0.5)
    record.write_text('{"step": 0, "refusal_rate": 2.0}')  # a record it must not read
    assert probe_of(trained)[0]["refusal_rate"] != 2.0 and len(calls) == 2
    assert json.loads(record.read_text())["refusal_rate"] == 2.0  # nor overwrite


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_lm_head_on_label_positions_only_gives_the_same_loss_and_gradients(smollm_tokenizer, arch):
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq

    from orthoguard.models import lora_config
    from orthoguard.training import label_positions_only

    vocab = len(smollm_tokenizer)
    rows = list(random_sft_dataset(vocab, n=4, length=14))
    rows[1]["labels"][:9] = [-100] * 9  # rows differ in where their completion starts
    smollm_tokenizer.padding_side = "right"
    batch = dict(DataCollatorForSeq2Seq(smollm_tokenizer, padding=True, label_pad_token_id=-100)(rows))

    def loss_and_grads(transform):
        model = get_peft_model(build_tiny_model(arch, vocab, seed=3), lora_config(LoraSettings(r=4, alpha=8, dropout=0.0)))
        torch.manual_seed(7)
        for name, p in model.named_parameters():  # B = 0 at init would leave A's gradient zero
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
        model.train()
        inputs = transform(model, batch)
        loss = model(**inputs, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum()).loss
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, inputs

    full, full_grads, _ = loss_and_grads(lambda m, b: b)
    kept, kept_grads, inputs = loss_and_grads(label_positions_only)
    assert inputs["logits_to_keep"].numel() < batch["input_ids"].shape[1] - 1  # the prompt positions were left out
    torch.testing.assert_close(kept, full, rtol=1e-6, atol=1e-6)
    assert full_grads.keys() == kept_grads.keys() and full_grads
    for name in full_grads:
        torch.testing.assert_close(kept_grads[name], full_grads[name], rtol=1e-5, atol=1e-7)


def test_completion_nll_equals_each_answer_scored_alone(smollm_tokenizer):
    """The evaluation's answer loss (length-sorted batches, LM head on label positions only) against a dense
    reference: every sample alone, the full logits, the mean over all answer tokens."""
    from orthoguard.data.formatting import build_sft_dataset
    from orthoguard.data.samples import Sample, assistant, user
    from orthoguard.evaluation import completion_nll

    answers = ["Yes.", "A much longer answer that runs on for a good many tokens, well past the others.", "No, not really.",
               "Paris is the capital of France.", "Two."]
    samples = [Sample(f"q{i}", (user(f"Question {i}: {'why ' * (3 * i)}?"), assistant(a)), "test")
               for i, a in enumerate(answers)]
    model = build_tiny_model("llama", len(smollm_tokenizer), seed=5).eval()
    dataset, _ = build_sft_dataset(smollm_tokenizer, samples, 256)
    total = count = 0.0
    with torch.no_grad():
        for row in dataset:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(row["labels"][1:])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    for batch_size in (1, 2, 8):
        assert completion_nll(model, smollm_tokenizer, samples, batch_size=batch_size) == pytest.approx(total / count, rel=1e-5)
    assert completion_nll(model, smollm_tokenizer, []) is None
