"""Benchmark: measured matmul GFLOP/s (fp32, and bf16 where the CPU computes it natively): this machine's peak.

The other benchmarks import ``measured_peak`` and ``share_of_peak`` to say what share of that peak a workload
reaches (model FLOPs per token x tokens/s / peak). On a shared machine the peak is measured under the same load
as the workload, so the share is a fair ratio even when both are low.

    python scripts/bench_peak.py [--size 1024] [--seconds 2]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch


def matmul_gflops(dtype: torch.dtype, size: int = 1024, seconds: float = 2.0) -> float:
    """Best-of-rounds GFLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on the CPU with torch's current threads."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up (and oneDNN kernel selection)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        reps = 4
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        elapsed = time.perf_counter() - start
        best = max(best, reps * 2 * size**3 / elapsed / 1e9)
    return best


@functools.lru_cache(maxsize=None)
def measured_peak(dtype: str = "fp32", size: int = 1024, seconds: float = 2.0) -> float:
    """Measured matmul GFLOP/s, cached per process: ``dtype`` is "fp32" or "bf16"."""
    return matmul_gflops(torch.float32 if dtype == "fp32" else torch.bfloat16, size, seconds)


def matmul_params(model) -> int:
    """Weights used in a matmul for every token: all parameters but the input embedding, plus the LM head's (a
    tied head shares the embedding's tensor yet is a full matmul)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    total = sum(p.numel() for p in base.parameters())
    n = total - embedding.numel()
    if head is embedding or head.data_ptr() == embedding.data_ptr():
        n += head.numel()
    return n


def generation_flops_per_token(model) -> float:
    """Forward FLOPs of one generated token, attention over the context left out (short contexts: a few %)."""
    return 2.0 * matmul_params(model)


def training_flops_per_token(model) -> float:
    """LoRA training with a frozen base: forward (2N) plus the backward's input gradients (2N); the frozen weights
    need no weight gradients, and the LoRA factors' are negligible at r=16."""
    return 4.0 * matmul_params(model)


def share_of_peak(flops_per_token: float, tokens_per_s: float, dtype: str = "fp32") -> float:
    return flops_per_token * tokens_per_s / (measured_peak(dtype) * 1e9)


def peak_line(dtype: str, flops_per_token: float, tokens_per_s: float) -> str:
    return (f"{flops_per_token * tokens_per_s / 1e9:7.1f} GFLOP/s = {100 * share_of_peak(flops_per_token, tokens_per_s, dtype):5.1f}% "
            f"of the measured {dtype} matmul peak ({measured_peak(dtype):.0f} GFLOP/s)")


def main() -> None:
    from orthoguard.hardware import cpu_features, prefers_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    features = cpu_features()
    print(f"cpu: {features.describe()}; torch threads {torch.get_num_threads()}")
    for size in sorted({args.size // 2, args.size, args.size * 2}):
        line = f"{size:5d}^3 matmul: fp32 {matmul_gflops(torch.float32, size, args.seconds):7.1f} GFLOP/s"
        if prefers_bf16(features):
            line += f", bf16 {matmul_gflops(torch.bfloat16, size, args.seconds):7.1f} GFLOP/s"
        print(line)


if __name__ == "__main__":
    from orthoguard.hardware import prepare_environment

    prepare_environment()
    main()
