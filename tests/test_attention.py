"""The training step's attention: matmul attention and packed batches give SDPA's padded loss and gradients in fp32,
inference stays on SDPA, the choices by CPU and device."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from orthoguard import attention
from orthoguard.config import LoraSettings, TrainConfig
from orthoguard.hardware import CpuFeatures
from orthoguard.models import resolve_precision
from orthoguard.training import label_positions_only, train_lora, training_collator
from tests.conftest import build_tiny_model, random_sft_dataset

VOCAB = 256


def _right_padded_batch(lengths=(12, 9, 5)):
    g = torch.Generator().manual_seed(1)
    ids = torch.full((len(lengths), max(lengths)), 2)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[row, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = attention.training_attention_forward

    def counting(kernel, module, query, *args, **kwargs):
        calls.append((kernel, torch.is_grad_enabled()))
        return real(kernel, module, query, *args, **kwargs)

    monkeypatch.setattr(attention, "training_attention_forward", counting)
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("lengths", [(12, 9, 5), (12, 12)], ids=["right-padded", "no-padding"])
def test_matmul_attention_gives_sdpas_loss_and_gradients_in_fp32(arch, lengths, spy):
    model = build_tiny_model(arch, VOCAB)
    batch = _right_padded_batch(lengths)
    loss_sdpa, grads_sdpa = _loss_and_grads(model, batch)
    with attention.training_attention(model, "eager"):
        assert model.config._attn_implementation == attention.IMPLEMENTATIONS["eager"]
        loss_eager, grads_eager = _loss_and_grads(model, batch)
    assert spy and set(spy) == {("eager", True)}  # the matmul path ran, with autograd recording
    assert model.config._attn_implementation == "sdpa"  # restored
    assert torch.allclose(loss_eager, loss_sdpa, atol=1e-6)
    assert grads_eager.keys() == grads_sdpa.keys() and len(grads_sdpa) > 10
    for name, grad in grads_sdpa.items():
        assert torch.allclose(grads_eager[name], grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_forward_pass_autograd_does_not_record_runs_sdpa_bit_for_bit(arch):
    model = build_tiny_model(arch, VOCAB).eval()
    batch = _right_padded_batch()
    del batch["labels"]
    with torch.no_grad():
        before = model(**batch).logits
        with attention.training_attention(model, "eager"):
            during = model(**batch).logits
            generated = model.generate(batch["input_ids"][:1, :5], max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        reference = model.generate(batch["input_ids"][:1, :5], max_new_tokens=4, do_sample=False)
    assert torch.equal(before, during) and torch.equal(generated, reference)


def test_sdpa_or_a_non_sdpa_model_is_left_as_it_is():
    model = build_tiny_model("llama", VOCAB)
    with attention.training_attention(model, "sdpa") as used:
        assert model.config._attn_implementation == "sdpa" and used == "sdpa"
    model.set_attn_implementation("eager")  # a config that asked for transformers' own eager attention keeps it
    with attention.training_attention(model, "eager", packed=True) as used:
        assert model.config._attn_implementation == "eager" and used == "eager"


def _samples(lengths=(12, 9, 5, 11)):
    g = torch.Generator().manual_seed(2)
    rows = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * 3 + ids[3:]})
    return rows


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_a_packed_batch_gives_the_padded_batchs_loss_and_gradients(arch, kernel, smollm_tokenizer, spy):
    model = build_tiny_model(arch, VOCAB)
    smollm_tokenizer.padding_side = "right"
    padded = dict(training_collator(smollm_tokenizer, packed=False)(_samples()))
    packed = dict(training_collator(smollm_tokenizer, packed=True)(_samples()))
    assert packed["input_ids"].shape == (1, 37) and "attention_mask" not in packed
    loss_padded, grads_padded = _loss_and_grads(model, label_positions_only(model, padded))
    with attention.training_attention(model, kernel, packed=True):
        loss_packed, grads_packed = _loss_and_grads(model, label_positions_only(model, packed))
    assert spy and set(spy) == {(kernel, True)}
    assert torch.allclose(loss_packed, loss_padded, atol=1e-6)
    for name, grad in grads_padded.items():
        assert torch.allclose(grads_packed[name], grad, atol=1e-6, rtol=1e-4), name


def test_packed_segments_are_read_from_restarting_position_ids():
    restart = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert attention.packed_segments(restart, 9) == [(0, 3), (3, 5), (5, 9)]
    assert attention.packed_segments(torch.arange(9)[None], 9) is None  # one sample: nothing to split
    assert attention.packed_segments(restart.repeat(2, 1), 9) is None  # a padded batch of two rows
    assert attention.packed_segments(torch.tensor([[0, 1, 2, 0, 2, 0, 1, 2, 3]]), 9) is None  # not counting up
    assert attention.packed_segments(None, 9) is None


@pytest.mark.parametrize("choice", [{"attention": "eager"}, {"packing": "on"}, {"attention": "eager", "packing": "on"}])
def test_train_lora_trains_as_configured_and_saves_the_adapter_sdpa_would_in_fp32(tmp_path, smollm_tokenizer, spy, choice):
    cfg = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=4, max_length=64, warmup_ratio=0.0,
                      lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    adapters = {}
    for name, update in (("reference", {"attention": "sdpa", "packing": "off"}), ("configured", choice)):
        model = build_tiny_model("llama", VOCAB)
        train_lora(model, smollm_tokenizer, random_sft_dataset(VOCAB, n=8), cfg.model_copy(update=update),
                   adapter_dir=tmp_path / name, log_path=tmp_path / f"{name}.json", mode=name, seed=0,
                   precision=resolve_precision("fp32", "cpu"))
        assert model.config._attn_implementation == "sdpa"  # restored after training
        log = json.loads((tmp_path / f"{name}.json").read_text())
        assert (log["attention"], log["packed"]) == (attention.resolve(update.get("attention", "auto"), "cpu", None),
                                                     attention.resolve_packing(update.get("packing", "auto"), "cpu"))
        adapters[name] = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    assert spy and {k for k, _ in spy} == {choice.get("attention", "sdpa")}  # only the configured run called it
    for name, tensor in adapters["reference"].items():
        assert torch.allclose(adapters["configured"][name], tensor, atol=1e-5), name


BF16_ONLY = CpuFeatures(avx2=True, avx512f=True, avx512_bf16=True)
AMX = CpuFeatures(avx2=True, avx512f=True, avx512_bf16=True, amx_bf16=True)


@pytest.mark.parametrize("requested, device, autocast, features, expected", [
    ("auto", "cpu", torch.bfloat16, BF16_ONLY, "eager"),
    ("auto", "cpu", torch.bfloat16, AMX, "sdpa"),
    ("auto", "cpu", None, BF16_ONLY, "sdpa"),
    ("auto", "cuda:0", torch.bfloat16, BF16_ONLY, "sdpa"),
    ("sdpa", "cpu", torch.bfloat16, BF16_ONLY, "sdpa"),
    ("eager", "cpu", None, AMX, "eager"),
])
def test_auto_picks_matmul_attention_only_for_bf16_training_on_a_cpu_without_amx(requested, device, autocast, features,
                                                                                  expected):
    assert attention.resolve(requested, device, autocast, features) == expected


def test_auto_packs_on_a_cpu_only():
    assert attention.resolve_packing("auto", "cpu") and not attention.resolve_packing("auto", "cuda:0")
    assert attention.resolve_packing("on", "cuda:0") and not attention.resolve_packing("off", "cpu")
