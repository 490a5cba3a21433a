"""Benchmark: what the projection adds to a training step, per family and placement.

Same model, same batch, same AdamW step; the only difference is the projection around ``optimizer.step()``.
Reports the median step time of vanilla and each variant, their ratio, and the projection's own time.

    python scripts/bench_projection.py [--model smollm2-135m-instruct] [--steps 5] [--batch 4] [--length 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import get_peft_model
from safetensors.torch import save_file

from orthoguard import attention
from orthoguard.config import DirectionsConfig, LoraSettings, ModelConfig
from orthoguard.directions import activation_directions, canonical_name, compute_directions, module_factors, random_like
from orthoguard.models import load_model, lora_config, resolve_precision
from orthoguard.projection import Projector, build_constraints


def fake_reference_adapter(model, settings: LoraSettings, folder: Path) -> Path:
    """A refusal-like adapter with random non-zero factors, so every family has something to project against."""
    peft = get_peft_model(model, lora_config(settings))
    g = torch.Generator().manual_seed(0)
    tensors = {canonical_name(n): torch.randn(p.shape, generator=g) * 0.01 for n, p in peft.named_parameters() if p.requires_grad}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def directions_for(family: str, ref: Path, hidden: int) -> dict:
    if family == "activation":
        shapes = {m: B.shape[0] for m, (_, B) in module_factors(ref).items()}
        return activation_directions(torch.randn(hidden), shapes)
    return compute_directions(family, ref, DirectionsConfig())


def time_steps(make_model, settings, batch, steps, projector_factory=None, accumulation: int = 1, autocast=None,
               packed: bool = False):
    """Median time of a full optimizer step (``accumulation`` forward/backward passes, under ``autocast`` (a dtype)
    when given, with the attention training would use, on a packed batch when ``packed``, as training does;
    clipping, projection, AdamW) and of the projection alone, over ``steps`` steps after one warm-up step."""
    model = get_peft_model(make_model(), lora_config(settings))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    projector = projector_factory(dict(model.named_parameters())) if projector_factory else None
    kernel = attention.resolve("auto", batch["input_ids"].device.type, autocast)  # the training step's default
    with attention.training_attention(model, kernel, packed):
        step_times, projection_times = _timed_steps(model, params, optim, projector, batch, steps, accumulation, autocast)
    del model, optim, projector
    return statistics.median(step_times[1:]), statistics.median(projection_times[1:])


def _timed_steps(model, params, optim, projector, batch, steps, accumulation, autocast):
    step_times, projection_times = [], []
    for _ in range(steps + 1):  # the first step warms up and is dropped
        _sync()
        start = time.perf_counter()
        for _ in range(accumulation):
            with torch.autocast(batch["input_ids"].device.type, dtype=autocast or torch.bfloat16,
                                enabled=autocast is not None):
                loss = model(**batch).loss / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        _sync()
        t0 = time.perf_counter()
        if projector:
            projector.before_step()
        _sync()
        t1 = time.perf_counter()
        optim.step()
        _sync()
        t2 = time.perf_counter()
        if projector:
            projector.after_step()
        _sync()
        t3 = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        step_times.append(t3 - start)
        projection_times.append((t1 - t0) + (t3 - t2))
    return step_times, projection_times


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


VARIANTS = [(f, at, r) for f in ("lora_factors", "delta_w", "subspace", "activation") for at in ("gradient", "update")
            for r in ((False, True) if at == "update" else (False,))]


def compare(make_model, settings, batch, steps, ref, hidden, accumulation=1, variants=VARIANTS, report=print,
            autocast=None, packed: bool = False) -> list[dict]:
    """Vanilla and every (family, placement, random) variant on the same model shape and batch."""
    vanilla, _ = time_steps(make_model, settings, batch, steps, accumulation=accumulation, autocast=autocast, packed=packed)
    rows = [{"variant": "vanilla", "step_s": vanilla, "ratio": 1.0, "projection_ms": 0.0}]
    report(f"{'variant':32s} {'step s':>8s} {'ratio':>7s} {'projection ms':>14s}")
    report(f"{'vanilla':32s} {vanilla:8.3f} {1.0:7.3f} {0.0:14.2f}")
    for family, at, random in variants:
        directions = directions_for(family, ref, hidden)
        d = random_like(directions, family, seed=1) if random else directions
        factory = lambda named, d=d, family=family, at=at: Projector(build_constraints(named, d, family), at)
        step, proj = time_steps(make_model, settings, batch, steps, factory, accumulation, autocast, packed)
        name = f"{'random-' if random else ''}{family}/{at}"
        rows.append({"variant": name, "step_s": step, "ratio": step / vanilla, "projection_ms": proj * 1000})
        report(f"{name:32s} {step:8.3f} {step / vanilla:7.3f} {proj * 1000:14.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    model_cfg = ModelConfig(name=args.model, dtype=args.dtype)
    settings = LoraSettings(r=16, alpha=32, dropout=0.0)
    base = load_model(model_cfg)
    device = base.device
    ids = torch.randint(3, base.config.vocab_size, (args.batch, args.length), generator=torch.Generator().manual_seed(0)).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with tempfile.TemporaryDirectory() as tmp:
        ref = fake_reference_adapter(base, settings, Path(tmp))
        hidden = base.config.hidden_size
        del base
        print(f"device {device}, batch {args.batch}x{args.length}, median of {args.steps} steps")
        precision = resolve_precision(model_cfg.dtype)
        print(f"weights {precision.weights}, autocast {precision.autocast}")
        compare(lambda: load_model(model_cfg, precision), settings, batch, args.steps, ref, hidden,
                autocast=precision.autocast)

if __name__ == "__main__":
    main()
