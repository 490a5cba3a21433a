"""The GPU smoke script runs end to end on a scaled-down Qwen3 shape on the CPU, so it does not rot between GPU sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess that builds and trains a model
def test_gpu_smoke_script_on_a_tiny_shape(tmp_path):
    out = tmp_path / "smoke.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--tiny", "--steps", "1", "--length", "16",
                    "--accumulation", "2", "--out", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    variants = [row["variant"] for row in result["training"]]
    assert variants[0] == "vanilla" and "subspace/update" in variants and "random-activation/update" in variants
    assert len(variants) == 13 and all(row["step_s"] > 0 and row["train_tokens_per_s"] > 0 for row in result["training"])
    assert result["generation"]["tokens_per_s"] > 0 and result["shape"] == "tiny"
