"""Independent random streams derived from the run's one seed.

Every consumer of randomness that must not share a stream with another gets its own seed,
``derive_seed(run_seed, "lora-init:attack")``: the refusal, blue, red and attack LoRAs start from unrelated
initialisations (a shared ``lora_A`` init would let an attack undo the refusal change by moving B alone), while
every attack variant of a run shares the attack stream, so the variants are a matched comparison.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, stream: str) -> int:
    """A seed in [0, 2**31) that depends on ``seed`` and the stream's name, and on nothing else."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def lora_init_seed(seed: int, role: str) -> int:
    """The LoRA initialisation of a training role: ``refusal``, ``blue``, ``red`` or ``attack`` (all variants)."""
    return derive_seed(seed, f"lora-init:{role}")
