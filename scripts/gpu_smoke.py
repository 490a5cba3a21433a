"""GPU smoke test: the seed's attack shape on a randomly initialised model of Qwen3-0.6B's exact architecture.

No hub, no data set: synthetic token batches (batch 4 x 448 tokens, accumulation 8, bf16) for a few optimizer steps,
vanilla and every projection family, then batched generation. Reports step time, tokens/s, peak GPU memory and the
projection's overhead, as JSON in --out (and a table on stdout).

    python scripts/gpu_smoke.py --out results.json            # on a GPU
    python scripts/gpu_smoke.py --tiny --out /tmp/smoke.json  # a scaled-down shape, to check the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from bench_projection import compare, fake_reference_adapter  # scripts/ is on sys.path when run as a script
from orthoguard.config import LoraSettings

# Qwen/Qwen3-0.6B's published config.json
QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
TINY = dict(QWEN3_06B, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a scaled-down shape (CPU check of the script)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=448)
    parser.add_argument("--accumulation", type=int, default=8)
    parser.add_argument("--out", default="gpu_smoke.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = Qwen3Config(**(TINY if args.tiny else QWEN3_06B))

    def make_model():
        torch.manual_seed(0)
        return Qwen3ForCausalLM(config).to(device=device, dtype=dtype)

    settings = LoraSettings(r=16, alpha=32, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.length), generator=g).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
              "shape": "tiny" if args.tiny else "Qwen3-0.6B", "batch": args.batch, "length": args.length,
              "accumulation": args.accumulation, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        ref = fake_reference_adapter(make_model(), settings, Path(tmp))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = compare(make_model, settings, batch, args.steps, ref, config.hidden_size, args.accumulation)
    tokens = args.batch * args.length * args.accumulation
    for row in rows:
        row["train_tokens_per_s"] = tokens / row["step_s"]
    result["training"] = rows
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    result["generation"] = generation_speed(make_model(), config, device)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "training"}, indent=2))


@torch.inference_mode()
def generation_speed(model, config, device, prompts: int = 16, prompt_len: int = 64, new_tokens: int = 128) -> dict:
    """Batched greedy generation with a KV cache; a random model never stops early, so every row makes new_tokens."""
    ids = torch.randint(0, config.vocab_size, (prompts, prompt_len), generator=torch.Generator().manual_seed(1)).to(device)
    model.eval()
    model.generate(input_ids=ids[:2, :8], max_new_tokens=4, do_sample=False)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"prompts": prompts, "new_tokens": new_tokens, "seconds": seconds, "tokens_per_s": prompts * new_tokens / seconds}


if __name__ == "__main__":
    main()
