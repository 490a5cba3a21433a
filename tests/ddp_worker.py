"""Train one LoRA with ``train_lora`` on a tiny model: alone, or as one rank under ``accelerate launch``.

Used by tests/test_distributed.py; prints nothing but the Trainer's own output.
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer

from orthoguard import distributed
from orthoguard.config import LoraSettings, TrainConfig
from orthoguard.directions import load_directions
from orthoguard.models import resolve_precision
from orthoguard.training import ProjectionSpec, train_lora
from tests.conftest import random_sft_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--directions")
    parser.add_argument("--family", default="subspace")
    parser.add_argument("--at", default="gradient")
    args = parser.parse_args()

    distributed.init(cpu=True)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    cfg = TrainConfig(max_steps=4, batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
                      learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.01, save_steps=0,
                      lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    projection = ProjectionSpec(load_directions(args.directions)[0], args.family, args.at) if args.directions else None
    train_lora(model, tokenizer, random_sft_dataset(model.config.vocab_size, n=32), cfg, adapter_dir=f"{args.out}/adapter",
               log_path=f"{args.out}/log.json", mode="ddp-test", seed=0, precision=resolve_precision("fp32", "cpu"),
               projection=projection)


if __name__ == "__main__":
    main()
