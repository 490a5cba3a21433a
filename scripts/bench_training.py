"""Benchmark: orthoguard's LoRA training step against the seed's loop, on the same HarmfulQA-shaped samples.

The seed's loop (``train/train_attack_lora.py`` as its README describes it; its code is not in this checkout): every
sample padded to 448 tokens, batch 4, a plain PyTorch loop over a PEFT model (forward, backward, clipping, AdamW).
orthoguard: ``orthoguard.training.train_lora`` (the HF Trainer; packed batches on a CPU, the training attention of
``attention.py``) in fp32 and, where the CPU has native bf16, with bf16 autocast; variants turn packing and the
attention kernel to either choice, run the LM head on every position, or patch ``training_arguments`` (length-grouped
batches) in this process only.

Samples are HarmfulQA-shaped: a HarmfulQA question opening a 2-4 exchange conversation whose last assistant turn is
the target (as HarmfulQA's red conversations give one sample per assistant turn); their lengths are drawn so that
padding to 448 wastes about 30% of positions, as the project notes measured on HarmfulQA-like conversations.

Runs ``--rounds`` rounds (the seed's loop, every variant, the seed's loop again) and prints real (non-padding) tokens/s
of each, each variant's median ratio to the seed's runs around it with the lowest and highest, the share of the
measured matmul peak, the fp32 loss of the seed's batches against orthoguard's, and, unless
``--skip-projection``, the projection's share of a step per family (``bench_projection.compare`` on one real batch).

    python scripts/bench_training.py [--steps 6] [--rounds 2] [--variants fp32,bf16,...] [--threads N] [--skip-projection]

Every run in one call shares the process's allocator setting: orthoguard's (``keep_freed_memory``) by default, so
the seed's loop gets it too; ``ORTHOGUARD_MALLOC=default python scripts/bench_training.py`` measures every run with
glibc's defaults, as the seed's loop ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orthoguard.hardware import configure_threads, cpu_features, keep_freed_memory, openmp_wait, prefers_bf16, prepare_environment

prepare_environment()  # before torch is imported
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peak import measured_peak, peak_line, training_flops_per_token  # noqa: E402

from orthoguard import data as D  # noqa: E402
from orthoguard import training as T  # noqa: E402
from orthoguard.attention import resolve as resolve_attention  # noqa: E402
from orthoguard.attention import resolve_packing, training_attention  # noqa: E402
from orthoguard.config import LoraSettings, ModelConfig, TrainConfig  # noqa: E402
from orthoguard.models import load_model, load_tokenizer, lora_config, resolve_precision  # noqa: E402

SEED_LENGTH = 448


def harmfulqa_shaped_samples(n: int, seed: int = 0) -> list[D.Sample]:
    """Conversations opened by HarmfulQA questions, 1-3 earlier exchanges, the last assistant turn the target."""
    rows = D.load_harmfulqa("harmfulqa-questions")
    questions = [r.question for r in rows]
    rng = random.Random(seed)
    words = " ".join(questions).split()

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    samples = []
    for i in range(n):
        q = questions[rng.randrange(len(questions))]
        messages = [D.samples.user(q)]
        for _ in range(rng.randint(1, 3)):
            messages += [D.samples.assistant(text(25, 75)), D.samples.user(text(10, 30))]
        messages.append(D.samples.assistant(text(40, 120)))
        samples.append(D.Sample(q, tuple(messages), "harmfulqa-shaped"))
    return samples


def seed_loop(model_cfg, settings: LoraSettings, dataset, tokenizer, batch_size: int, lr: float) -> tuple[float, int, int]:
    """Every sample padded to 448, plain loop: (seconds, real tokens, padded positions) over one pass."""
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(model_cfg, resolve_precision("fp32")), lora_config(settings))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    pad = tokenizer.pad_token_id
    real = positions = 0
    start = time.perf_counter()
    for s in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
        batch = padded_to_seed_length(rows, pad)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        real += int(batch["attention_mask"].sum())
        positions += batch["attention_mask"].numel()
    seconds = time.perf_counter() - start
    del model, optim
    return seconds, real, positions


def timed_seed_loop(model_cfg, settings, dataset, tokenizer, batch_size: int, lr: float, real: int) -> float:
    seconds, real_seed, _ = seed_loop(model_cfg, settings, dataset, tokenizer, batch_size, lr)
    assert real_seed == real
    return seconds


def runnable(variant: str, features) -> bool:
    if variant.startswith("bf16") and not prefers_bf16(features):
        print(f"skipping {variant}: this CPU has no native bf16")
        return False
    return True


def padded_to_seed_length(rows, pad: int):
    ids = torch.full((len(rows), SEED_LENGTH), pad)
    mask = torch.zeros((len(rows), SEED_LENGTH), dtype=torch.long)
    labels = torch.full((len(rows), SEED_LENGTH), -100)
    for j, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[j, :n], mask[j, :n], labels[j, :n] = torch.tensor(r["input_ids"]), 1, torch.tensor(r["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_identity(model_cfg, settings: LoraSettings, dataset, tokenizer, batch_size: int) -> float:
    """Largest |loss difference| over the batches between the seed's input (padded to 448, LM head everywhere) and
    orthoguard's training batches in fp32 (packed or padded as ``packing: auto`` gives on this machine, the LM head
    on label positions only, the training attention, autograd recording as in training), same model with a
    non-zero LoRA."""
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(model_cfg, resolve_precision("fp32")), lora_config(settings))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    tokenizer.padding_side = "right"
    fp32 = resolve_precision("fp32")
    packed = resolve_packing("auto", fp32.device)
    collate = T.training_collator(tokenizer, packed)
    worst = 0.0
    with training_attention(model, resolve_attention("auto", fp32.device, fp32.autocast), packed):
        for s in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
            with torch.no_grad():
                seed_loss = model(**padded_to_seed_length(rows, tokenizer.pad_token_id)).loss
            ours = model(**T.label_positions_only(model, dict(collate(rows)))).loss
            worst = max(worst, abs(float(seed_loss) - float(ours.detach())))
    return worst


def orthoguard_run(model_cfg, tokenizer, dataset, cfg: TrainConfig, dtype: str, arguments_patch=None,
                   full_logits: bool = False, attention: str = "auto", packing: str = "auto") -> float:
    """Seconds of ``train_lora``'s ``trainer.train()`` over one pass of ``dataset``.

    ``arguments_patch`` edits the ``TrainingArguments`` that training.py builds; ``full_logits`` turns off
    training.py's LM head on label positions only (``label_positions_only``), to measure what it gives;
    ``attention`` and ``packing`` are the training config's keys of those names (auto or a choice)."""
    original = T.training_arguments
    own_loss = T.OrthoguardTrainer.compute_loss
    if full_logits:
        T.OrthoguardTrainer.compute_loss = T.Trainer.compute_loss
    if arguments_patch is not None:
        T.training_arguments = lambda *a, **k: arguments_patch(original(*a, **k))
    try:
        precision = resolve_precision(dtype)
        cfg = cfg.model_copy(update={"attention": attention, "packing": packing})
        with tempfile.TemporaryDirectory() as tmp:
            result = T.train_lora(load_model(model_cfg, precision), tokenizer, dataset, cfg, adapter_dir=Path(tmp) / "a",
                                  log_path=Path(tmp) / "log.json", mode="bench", seed=0, precision=precision)
        return result.seconds
    finally:
        T.training_arguments = original
        T.OrthoguardTrainer.compute_loss = own_loss


def run_variant(variant: str, model_cfg, tokenizer, dataset, cfg: TrainConfig) -> float:
    """``orthoguard_run`` for a ``--variants`` entry such as ``bf16+padded+sdpa``."""
    return orthoguard_run(
        model_cfg, tokenizer, dataset, cfg, "bf16" if variant.startswith("bf16") else "fp32",
        group_by_length if "+grouped" in variant else None, full_logits="+full-logits" in variant,
        attention=next((a for a in ("sdpa", "eager") if f"+{a}" in variant), "auto"),
        packing="off" if "+padded" in variant else "on" if "+packed" in variant else "auto")


def group_by_length(args):
    args.train_sampling_strategy = "group_by_length"
    return args


def projection_shares(model_cfg, settings, dataset, tokenizer, batch_size: int, steps: int) -> None:
    """The projection's share of a step for each family/placement, on one real training batch (packed where
    training packs)."""
    import bench_projection as P

    tokenizer.padding_side = "right"
    precision = resolve_precision("auto")  # the default training path: bf16 autocast where the CPU has native bf16
    packed = resolve_packing("auto", precision.device)
    batch = dict(T.training_collator(tokenizer, packed)([dataset[i] for i in range(batch_size)]))
    base = load_model(model_cfg, precision)
    hidden = base.config.hidden_size
    with tempfile.TemporaryDirectory() as tmp:
        ref = P.fake_reference_adapter(base, settings, Path(tmp))
        del base
        print(f"projection: batch {tuple(batch['input_ids'].shape)}, autocast {precision.autocast}, median of {steps} "
              "steps after a warm-up")
        rows = P.compare(lambda: load_model(model_cfg, precision), settings, batch, steps, ref, hidden,
                         autocast=precision.autocast, packed=packed)
    print(f"{'variant':32s} {'projection share of a step':>28s}")
    for row in rows[1:]:
        print(f"{row['variant']:32s} {100 * row['projection_ms'] / 1000 / row['step_s']:27.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of batch 4 per run")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-projection", action="store_true")
    parser.add_argument("--projection-steps", type=int, default=2)
    parser.add_argument("--variants", default="fp32,fp32+padded,bf16,bf16+padded,bf16+padded+sdpa",
                        help="orthoguard runs, comma-separated: fp32 or bf16 (autocast), then any of +full-logits "
                             "(the LM head on every position), +grouped (length-grouped batches), +padded or +packed "
                             "(the training config's packing off or on; otherwise auto), +sdpa or +eager (its "
                             "attention; otherwise auto)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every variant, alternated with the seed's loop")
    parser.add_argument("--projection-only", action="store_true")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    features = cpu_features()
    malloc = "freed memory kept (keep_freed_memory)" if keep_freed_memory() else "the C library's defaults"
    print(f"cpu: {features.describe()}; torch threads {threads}; OpenMP waits: {openmp_wait()}; "
          f"allocator: {malloc}, for every run here; "
          f"load average {os.getloadavg()[0]:.1f} (a shared machine: compare ratios, not absolute numbers)")
    model_cfg = ModelConfig(name=args.model)
    tokenizer = load_tokenizer(model_cfg)
    n = args.steps * args.batch
    dataset, dropped = D.build_sft_dataset(tokenizer, harmfulqa_shaped_samples(n * 2), SEED_LENGTH)
    dataset = dataset.select(range(min(n, len(dataset))))
    lengths = [len(r) for r in dataset["input_ids"]]
    real = sum(lengths)
    print(f"{len(dataset)} samples ({dropped} of {2 * n} drafted were too long), mean {real / len(dataset):.0f} tokens, "
          f"max {max(lengths)}; padding to {SEED_LENGTH} wastes {100 * (1 - real / (SEED_LENGTH * len(dataset))):.0f}% of positions")
    settings = LoraSettings(r=16, alpha=32, dropout=0.0)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, learning_rate=5e-4, max_length=SEED_LENGTH, warmup_ratio=0.0,
                      save_steps=0, lora=settings)

    if args.projection_only:
        print(f"fp32 loss, the seed's batches vs orthoguard's: largest difference "
              f"{loss_identity(model_cfg, settings, dataset, tokenizer, args.batch):.2e}")
        projection_shares(model_cfg, settings, dataset, tokenizer, args.batch, args.projection_steps)
        return
    measured_peak("fp32"), prefers_bf16(features) and measured_peak("bf16")  # measured before the runs
    variants = [v for v in args.variants.split(",") if runnable(v, features)]
    auto = resolve_precision("auto")
    print(f"training attention under auto (bf16 where native): {resolve_attention('auto', auto.device, auto.autocast)}")
    # Rounds alternate the seed's loop with every variant, and each variant's ratio in a round is taken against
    # the mean of the seed's runs just before and after it: on a machine whose speed drifts from minute to minute
    # (another tenant's load) that pairs each run with the baseline of its own minutes.
    warm = dataset.select(range(args.batch))  # first calls pay one-time costs (kernels, allocator): not timed
    seed_loop(model_cfg, settings, warm, tokenizer, args.batch, cfg.learning_rate)
    for variant in variants:
        run_variant(variant, model_cfg, tokenizer, warm, cfg)
    seed_runs = [timed_seed_loop(model_cfg, settings, dataset, tokenizer, args.batch, cfg.learning_rate, real)]
    runs: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            runs[variant].append(run_variant(variant, model_cfg, tokenizer, dataset, cfg))
        seed_runs.append(timed_seed_loop(model_cfg, settings, dataset, tokenizer, args.batch, cfg.learning_rate, real))

    print(f"fp32 loss, the seed's batches vs orthoguard's training batches (label-position logits): largest "
          f"difference over {-(-len(dataset) // args.batch)} batches {loss_identity(model_cfg, settings, dataset, tokenizer, args.batch):.2e}")
    print(f"seed loop runs: {', '.join(f'{s:.1f}' for s in seed_runs)} s; load average at the end {os.getloadavg()[0]:.1f}")
    flops = training_flops_per_token(load_model(model_cfg, resolve_precision("fp32")))
    baselines = [(a + b) / 2 for a, b in zip(seed_runs, seed_runs[1:])]
    print(f"{args.steps} optimizer steps of batch {args.batch}, {real} real tokens per run, {args.rounds} round(s); "
          "vs seed: the median over rounds of each round's ratio to the seed's runs around it [lowest, highest]")
    print(f"{'run':42s} {'median s':>9s} {'real tok/s':>11s} {'vs seed':>8s} {'range':>14s}")
    rows = {"seed loop (pad to 448, fp32)": (seed_runs, [1.0])}
    rows.update({f"orthoguard train_lora {v}": (runs[v], [b / t for b, t in zip(baselines, runs[v])]) for v in variants})
    for name, (seconds, ratios) in rows.items():
        sec = statistics.median(seconds)
        print(f"{name:42s} {sec:9.1f} {real / sec:11.1f} {statistics.median(ratios):7.2f}x "
              f"{f'[{min(ratios):.2f}, {max(ratios):.2f}]':>14s}")
    for name, (seconds, _) in rows.items():
        print(f"  {name:40s} {peak_line('bf16' if 'bf16' in name else 'fp32', flops, real / statistics.median(seconds))}")
    if not args.skip_projection:
        projection_shares(model_cfg, settings, dataset, tokenizer, args.batch, args.projection_steps)


if __name__ == "__main__":
    main()
