"""Checkpoints and resume: a real `orthoguard run` process is killed with SIGKILL in the middle of an attack
training, the same command is run again, and the attack adapter equals that of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from orthoguard.training import CHECKPOINT_STATE, last_complete_checkpoint

STEPS, SAVE_EVERY, KILL_AFTER = 12, 3, 6

pytestmark = pytest.mark.slow  # real `orthoguard run` processes, killed and restarted


def _config(tmp_path, model_dir, name):
    cfg = {
        "name": name,
        "output_dir": str(tmp_path / name),
        "model": {"name": str(model_dir), "dtype": "fp32"},
        "data": {"max_refusal_questions": 8, "max_attack_questions": 10, "max_test_prompts": 3,
                 "benign_train_prompts": 2, "benign_eval_prompts": 2, "benign_max_new_tokens": 4,
                 "benign_reference_prompts": 2, "attack_heldout_questions": 1},
        "synth": {"max_new_tokens": 12, "batch_size": 8},
        "refusal": {"max_steps": 2, "batch_size": 4, "max_length": 64, "lora": {"r": 4, "alpha": 8}},
        "attack": {"probe_every": 4, "probe_prompts": 2, "probe_max_new_tokens": 4,
                   # dropout and weight decay: the RNG state and the optimizer state must both come back
                   "training": {"max_steps": STEPS, "save_steps": SAVE_EVERY, "batch_size": 2, "max_length": 64,
                                "weight_decay": 0.01, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
                   "variants": [{"name": "subspace", "mode": "orthogonal", "directions": "subspace", "at": "update"}]},
        "evaluation": {"max_new_tokens": 4, "batch_size": 4},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _command(config):
    return [sys.executable, "-m", "orthoguard", "run", str(config)]


def _env():
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _kill_once_checkpointed(config, checkpoints, timeout=600.0):
    """Start the run, SIGKILL it as soon as the attack has a complete checkpoint at step KILL_AFTER."""
    proc = subprocess.Popen(_command(config), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker_glob = f"attack-subspace-*/checkpoint-{KILL_AFTER}/{CHECKPOINT_STATE}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(checkpoints.glob(marker_glob)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-training (rc {proc.returncode}): {stderr[-2000:]}"


def test_killed_attack_resumes_to_the_same_adapter(tmp_path, tiny_model_dir):
    reference = _config(tmp_path, tiny_model_dir, "reference")
    assert subprocess.run(_command(reference), env=_env(), capture_output=True).returncode == 0

    interrupted = _config(tmp_path, tiny_model_dir, "interrupted")
    run = tmp_path / "interrupted"
    _kill_once_checkpointed(interrupted, run / "checkpoints")
    assert not (run / "adapters/attack-subspace").exists()
    done = subprocess.run(_command(interrupted), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr

    log = json.loads((run / "logs/training_loss_subspace.json").read_text())
    assert KILL_AFTER <= log["resumed_from_step"] < STEPS
    assert [r["step"] for r in log["losses"]] == list(range(1, STEPS + 1))
    assert [p["step"] for p in log["probes"]] == [0, 4, 8, 12]
    assert not list((run / "checkpoints").glob("*")), "checkpoints are removed once the adapter is saved"

    want = load_file(tmp_path / "reference/adapters/attack-subspace/adapter_model.safetensors")
    got = load_file(run / "adapters/attack-subspace/adapter_model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    reference_log = json.loads((tmp_path / "reference/logs/training_loss_subspace.json").read_text())
    for a, b in zip(log["losses"], reference_log["losses"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def _fake_checkpoint(folder, step, tensor=torch.ones(2, 2)):
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": tensor}, path / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        (path / name).write_bytes(b"x")
    (path / "trainer_state.json").write_text("{}")
    (path / CHECKPOINT_STATE).write_text(json.dumps({"step": step, "records": []}))
    return path


def test_newest_complete_checkpoint_is_chosen_and_damaged_ones_are_reported(tmp_path, caplog):
    good = _fake_checkpoint(tmp_path, 2)
    truncated = _fake_checkpoint(tmp_path, 4, torch.ones(64, 64))
    blob = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(blob[: len(blob) // 2])
    unfinished = _fake_checkpoint(tmp_path, 6)
    (unfinished / CHECKPOINT_STATE).unlink()  # killed before the last file of the checkpoint was written
    assert last_complete_checkpoint(tmp_path) == good
    assert f"{truncated} not used: unreadable" in caplog.text
    assert f"{unfinished} not used: {CHECKPOINT_STATE} missing" in caplog.text
    assert last_complete_checkpoint(tmp_path / "absent") is None
