"""Benchmark: orthoguard's generation against the seed's loop, on the same prompts, in one run.

The seed's loop (``evaluate/test_refusal_local.py``, as the project brief describes it; the seed's code itself is not
in this checkout): one prompt at a time, ``generate`` on the unmerged PEFT model, sampled (temperature 0.7,
top-p 0.9). orthoguard: the LoRA merged into a copy of the weights (``merged_for_generation``, timed as part of its
run), prompts batched by token length, finished rows dropped, in fp32 and, where the CPU has native bf16, in bf16.
The adapter is a fresh LoRA (r=16 on q/k/v/o/gate/up/down) with random non-zero B factors, so the unmerged model
really pays for its adapters and its replies differ from the base model's.

Prints generated tokens/s (new tokens up to and including end-of-sequence) of each, the ratios, the share of the
measured matmul peak, and how many greedy fp32 replies equal a plain transformers reference (``model.generate`` on
the merged model, one prompt at a time, no padding).

    python scripts/bench_generation.py [--prompts 32] [--tokens 64] [--batch 32] [--threads N]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orthoguard.hardware import configure_threads, cpu_features, openmp_wait, prefers_bf16, prepare_environment

prepare_environment()  # before torch is imported
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peak import generation_flops_per_token, measured_peak, peak_line  # noqa: E402

from orthoguard import data as D  # noqa: E402
from orthoguard.config import ModelConfig  # noqa: E402
from orthoguard.generation import GenerationSettings, chat_prompt, generate_token_ids, merged_for_generation  # noqa: E402
from orthoguard.judges import strip_thinking  # noqa: E402
from orthoguard.models import load_with_adapters  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_lora(model, r: int = 16, seed: int = 0, scale: float = 0.04):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGETS,
                                            task_type="CAUSAL_LM"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=scale)
    return peft.eval()


@torch.inference_mode()
def seed_loop(model, tokenizer, prompts, max_new_tokens: int, sample: bool = True, seed: int = 0) -> list[list[int]]:
    """One prompt at a time through ``model.generate`` without padding: the seed's loop (sampled) and, greedy, the
    plain transformers reference."""
    torch.manual_seed(seed)
    kwargs = {"do_sample": True, "temperature": 0.7, "top_p": 0.9} if sample else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    out = []
    for prompt in prompts:
        ids = tokenizer(chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
        new = model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs)
        out.append(new[0, ids["input_ids"].shape[1]:].tolist())
    return out


def texts(tokenizer, rows) -> list[str]:
    return [strip_thinking(t).strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def count(rows, eos: int) -> int:
    """New tokens up to and including the first end-of-sequence token."""
    return sum((r.index(eos) + 1) if eos in r else len(r) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-reference", action="store_true", help="leave out the greedy agreement check")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    features = cpu_features()
    print(f"cpu: {features.describe()}; torch threads {threads}; OpenMP waits: {openmp_wait()}; "
          f"load average {os.getloadavg()[0]:.1f} (a shared machine: compare ratios, not absolute numbers)")
    base, tokenizer, _ = load_with_adapters(ModelConfig(name=args.model))
    peft = random_lora(base)
    prompts = D.load_harmful_instructions("test")[: args.prompts]
    eos = tokenizer.eos_token_id
    flops = generation_flops_per_token(base)
    rows: dict[str, tuple[float, int]] = {}

    measured_peak("fp32"), prefers_bf16(features) and measured_peak("bf16")  # measured before the runs
    # the seed's loop runs on half the prompts first and on the other half last, so that a load that changes during
    # the run (a shared machine) weighs on it as on the runs in between
    seed_name = "seed loop (unmerged PEFT, 1 at a time, sampled)"
    start = time.perf_counter()
    first = seed_loop(peft, tokenizer, prompts[::2], args.tokens, sample=True)
    seed_first_s = time.perf_counter() - start

    sampled = GenerationSettings(args.tokens, args.batch, do_sample=True, temperature=0.7, top_p=0.9)
    runs = [("orthoguard fp32, sampled", torch.float32, sampled)]
    if prefers_bf16(features):
        runs.append(("orthoguard bf16, sampled", torch.bfloat16, sampled))
    outputs = {}
    for name, dtype, settings in runs:
        start = time.perf_counter()
        merged = merged_for_generation(peft, dtype if dtype != torch.float32 else None)
        outputs[name] = generate_token_ids(merged, tokenizer, prompts, settings, seed=0, desc=name)
        rows[name] = (time.perf_counter() - start, count(outputs[name], eos))
        del merged

    merged = merged_for_generation(peft)
    greedy = GenerationSettings(args.tokens, args.batch)
    start = time.perf_counter()
    ours_greedy = generate_token_ids(merged, tokenizer, prompts, greedy)
    rows["orthoguard fp32, greedy"] = (time.perf_counter() - start, count(ours_greedy, eos))

    start = time.perf_counter()
    second = seed_loop(peft, tokenizer, prompts[1::2], args.tokens, sample=True, seed=1)
    seed_rows = first + second
    rows = {seed_name: (seed_first_s + time.perf_counter() - start, count(seed_rows, eos)), **rows}
    seed_s, seed_n = rows[seed_name]
    seed_rate = seed_n / seed_s
    print(f"{len(prompts)} prompts, up to {args.tokens} new tokens, orthoguard batch {args.batch}")
    print(f"{'run':50s} {'s':>7s} {'tokens':>7s} {'tok/s':>8s} {'vs seed':>8s}")
    for name, (seconds, n) in rows.items():
        print(f"{name:50s} {seconds:7.1f} {n:7d} {n / seconds:8.1f} {n / seconds / seed_rate:7.1f}x")
    print(f"(load average at the end {os.getloadavg()[0]:.1f})")
    for name, (seconds, n) in rows.items():
        dtype = "bf16" if "bf16" in name else "fp32"
        print(f"  {name:48s} {peak_line(dtype, flops, n / seconds)}")

    if not args.skip_reference:
        start = time.perf_counter()
        reference = seed_loop(merged, tokenizer, prompts, args.tokens, sample=False)
        ref_s = time.perf_counter() - start
        ref_n = count(reference, eos)
        print(f"{'reference (merged, 1 at a time, greedy, fp32)':50s} {ref_s:7.1f} {ref_n:7d} {ref_n / ref_s:8.1f} "
              f"{ref_n / ref_s / seed_rate:7.1f}x")
        want, got = texts(tokenizer, reference), texts(tokenizer, ours_greedy)
        same = sum(a == b for a, b in zip(want, got))
        print(f"greedy fp32 agreement with the reference: {same}/{len(prompts)} identical replies; "
              f"orthoguard greedy vs reference speed {(rows['orthoguard fp32, greedy'][1] / rows['orthoguard fp32, greedy'][0]) / (ref_n / ref_s):.1f}x")
        unmerged = texts(tokenizer, [r for r in seed_rows])
        base_greedy = texts(tokenizer, seed_loop(base_model_of(peft), tokenizer, prompts[:4], args.tokens, sample=False))
        print(f"the adapter changes replies: {sum(a != b for a, b in zip(base_greedy, want[:4]))}/4 greedy replies differ "
              f"from the base model's; seed loop replies sampled: {len(unmerged)}")


def base_model_of(peft):
    """The PEFT model with its adapters switched off (a context manager would be neater; this is a benchmark)."""
    class _Disabled:
        def __init__(self, model):
            self.model = model

        def generate(self, **kwargs):
            with self.model.disable_adapter():
                return self.model.generate(**kwargs)

    return _Disabled(peft)


if __name__ == "__main__":
    main()
