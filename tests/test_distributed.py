"""DDP through `accelerate launch`: two CPU processes (gloo) train the same adapter as one process with the same
global batch, with and without the projection, and `orthoguard run` works under the launcher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from orthoguard.config import DirectionsConfig
from orthoguard.directions import compute_directions, save_directions

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).with_name("accelerate")
LAUNCH = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]

pytestmark = [pytest.mark.skipif(shutil.which(str(ACCELERATE)) is None, reason="accelerate launcher not installed"),
              pytest.mark.slow]  # real multi-process launches (accelerate, gloo)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": ""}


def _run(command, cwd=ROOT):
    done = subprocess.run(command, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _subspace_directions(tmp_path, model_dir):
    """Subspace directions of a random "refusal" adapter for the tiny model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from orthoguard.config import LoraSettings
    from orthoguard.models import lora_config

    adapter = tmp_path / "refusal"
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora_config(LoraSettings(r=4, alpha=8))).save_pretrained(adapter)
    g = torch.Generator().manual_seed(3)
    weights = adapter / "adapter_model.safetensors"
    save_file({k: torch.randn(v.shape, generator=g) for k, v in load_file(weights).items()}, weights)
    path = tmp_path / "subspace.safetensors"
    save_directions(path, compute_directions("subspace", adapter, DirectionsConfig(subspace_k=2)), {"family": "subspace"})
    return path


@pytest.mark.parametrize("projected", [False, True], ids=["vanilla", "orthogonal-gradient"])
def test_two_processes_train_the_single_process_adapter(tmp_path, tiny_model_dir, projected):
    worker = [str(ROOT / "tests" / "ddp_worker.py"), str(tiny_model_dir)]
    extra = ["--directions", str(_subspace_directions(tmp_path, tiny_model_dir)), "--at", "gradient"] if projected else []
    _run(LAUNCH + worker + [str(tmp_path / "two"), "--batch-size", "2"] + extra)  # 2 ranks x 2 = global batch 4
    _run([sys.executable] + worker + [str(tmp_path / "one"), "--batch-size", "4"] + extra)

    two_log, one_log = (json.loads((tmp_path / d / "log.json").read_text()) for d in ("two", "one"))
    assert (two_log["world_size"], one_log["world_size"]) == (2, 1)
    assert [r["loss"] for r in two_log["losses"]] == pytest.approx([r["loss"] for r in one_log["losses"]], abs=1e-5)
    if projected:  # the projection ran on both and removed the same share of the (synchronised) gradient
        assert [r["grad_removed_frac"] for r in two_log["losses"]] == pytest.approx(
            [r["grad_removed_frac"] for r in one_log["losses"]], abs=1e-5)
        assert all(r["grad_removed_frac"] > 0 for r in two_log["losses"])
    two, one = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("two", "one"))
    assert two.keys() == one.keys()
    assert any(one[k].abs().max() > 1e-3 for k in one if ".lora_B." in k)  # the adapters did train
    # Two ranks sum the gradient in another order (differences ~1e-9). Where the projection has removed a component,
    # Adam divides what is left (that noise) by its own tiny second moment, so those entries differ by up to ~2e-5.
    tolerance = 1e-4 if projected else 1e-5
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=tolerance, msg=key)


def test_orthoguard_run_under_accelerate_launch(tmp_path, tiny_model_dir):
    """The whole pipeline with two ranks: rank 0 generates and writes, both train; same attack as one process."""
    def config(name, batch):
        lora = {"r": 4, "alpha": 8, "dropout": 0.0}  # dropout masks depend on how the batch is split across ranks
        cfg = {
            "name": name, "output_dir": str(tmp_path / name), "model": {"name": str(tiny_model_dir), "dtype": "fp32"},
            "data": {"max_refusal_questions": 8, "max_attack_questions": 9, "max_test_prompts": 3, "benign_train_prompts": 2,
                     "benign_eval_prompts": 2, "benign_max_new_tokens": 4, "benign_reference_prompts": 2,
                     "attack_heldout_questions": 1},
            "synth": {"max_new_tokens": 12, "batch_size": 8},
            "refusal": {"max_steps": 2, "batch_size": batch, "max_length": 64, "lora": lora},
            "attack": {"probe_every": 2, "probe_prompts": 2, "probe_max_new_tokens": 4,
                       "training": {"max_steps": 3, "batch_size": batch, "max_length": 64, "lora": lora},
                       "variants": [{"name": "subspace", "mode": "orthogonal", "directions": "subspace", "at": "update"}]},
            "evaluation": {"max_new_tokens": 4, "batch_size": 4},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    _run(LAUNCH + ["-m", "orthoguard", "run", str(config("two", 2))])
    _run([sys.executable, "-m", "orthoguard", "run", str(config("one", 4))])
    for run in ("two", "one"):
        assert (tmp_path / run / "results/summary.json").is_file()
    log = json.loads((tmp_path / "two/logs/training_loss_subspace.json").read_text())
    assert log["world_size"] == 2 and [p["step"] for p in log["probes"]] == [0, 2, 3]
    assert not list((tmp_path / "two").rglob("*.tmp")) and not list((tmp_path / "two" / "adapters").glob(".*"))
    two = load_file(tmp_path / "two/adapters/attack-subspace/adapter_model.safetensors")
    one = load_file(tmp_path / "one/adapters/attack-subspace/adapter_model.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
