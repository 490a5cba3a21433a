"""Benchmark: batched generation (left padding, KV cache) against the seed's one-prompt-at-a-time loop.

Same model, same prompts, greedy, same number of new tokens; reports tokens/s of each and the ratio, and whether
the two produced the same strings.

    python scripts/bench_generation.py [--model smollm2-135m-instruct] [--prompts 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import time

from orthoguard import data as D
from orthoguard.config import ModelConfig
from orthoguard.generation import GenerationSettings, generate
from orthoguard.models import load_with_adapters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    model, tokenizer, _ = load_with_adapters(ModelConfig(name=args.model))
    prompts = D.load_harmless("test")[: args.prompts]
    timings, outputs = {}, {}
    for name, batch_size in (("batched", args.prompts), ("one at a time", 1)):
        start = time.perf_counter()
        outputs[name] = generate(model, tokenizer, prompts, GenerationSettings(args.tokens, batch_size))
        timings[name] = time.perf_counter() - start
    new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs["batched"])
    for name, seconds in timings.items():
        print(f"{name:14s} {seconds:7.1f} s  {new_tokens / seconds:7.1f} generated tok/s")
    same = sum(a == b for a, b in zip(outputs["batched"], outputs["one at a time"]))
    print(f"speed-up {timings['one at a time'] / timings['batched']:.2f}x; identical outputs {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
