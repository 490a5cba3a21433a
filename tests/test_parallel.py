"""Independent stages in parallel (`orthoguard run --jobs N`, `--executor slurm`): the stage graph, the cluster
config, several writers of stages.json, and real runs: two local workers give the serial run's adapters and rates,
submitit's local executor runs one stage to completion, and a worker killed mid-stage is redone alone."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from orthoguard.cli import main
from orthoguard.config import load_config
from orthoguard.errors import ConfigError
from orthoguard.parallel import (check_cluster_stages, expected_jobs, run_stage_job, slurm_parameters, stage_graph,
                                 stage_resources)
from orthoguard.training import CHECKPOINT_STATE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _config(tmp_path, model_dir, name="tiny", variants=None, attack_training=None):
    cfg = {
        "name": name,
        "output_dir": str(tmp_path / name),
        "threads": 1,  # the serial run and every worker use one thread: bit-comparable float reductions
        "model": {"name": str(model_dir), "dtype": "fp32"},
        "data": {"max_refusal_questions": 8, "max_attack_questions": 8, "max_test_prompts": 4,
                 "benign_train_prompts": 2, "benign_eval_prompts": 2, "benign_max_new_tokens": 4,
                 "benign_reference_prompts": 2, "attack_heldout_questions": 1},
        "synth": {"max_new_tokens": 8, "batch_size": 8},
        "refusal": {"max_steps": 2, "batch_size": 4, "max_length": 64, "lora": {"r": 4, "alpha": 8}},
        "attack": {"probe_every": 1, "probe_prompts": 2, "probe_max_new_tokens": 4,
                   "training": {"max_steps": 2, "batch_size": 4, "max_length": 64, "lora": {"r": 4, "alpha": 8},
                                **(attack_training or {})},
                   "variants": variants or [
                       {"name": "vanilla"},
                       {"name": "orthogonal", "mode": "orthogonal", "directions": "lora_factors", "at": "gradient"},
                       {"name": "subspace", "mode": "orthogonal", "directions": "subspace", "at": "update"},
                       {"name": "subspace-matched", "mode": "orthogonal", "directions": "subspace", "at": "update",
                        "random": "matched"}]},
        "evaluation": {"max_new_tokens": 4, "batch_size": 4, "prompt_sets": [{"name": "xstest-safe", "limit": 2}]},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------------------------
# The graph and the cluster section (no processes)


def test_attacks_read_only_the_refusal_adapter_and_directions_and_each_evaluation_only_its_model():
    cfg = load_config(CONFIGS / "qwen3-matched.yaml")
    graph = stage_graph(cfg)
    attacks = [n for n in graph if n.startswith("attack:")]
    assert len(attacks) == 13
    for name in attacks:
        extra = set(graph[name]) - {"data", "synth", "refusal", "directions"}
        if name.endswith("-matched"):  # sized from its defence's log
            assert extra == {"attack:" + name.removeprefix("attack:").removesuffix("-matched")}
        else:
            assert not extra, name
    evals = [n for n in graph if n.startswith("eval:")]
    assert sorted(evals) == sorted(["eval:base", "eval:aligned"] + [a.replace("attack:", "eval:") for a in attacks])
    for name in evals:  # one model's evaluation reads its own adapters' stages and nothing of another model
        model = name.removeprefix("eval:")
        assert [u for u in graph[name] if u.startswith("attack:")] == ([] if model in ("base", "aligned") else [f"attack:{model}"])
        assert ("refusal" in graph[name]) == (model != "base")
    assert set(evals) <= set(graph["evaluate"]) and not [u for u in graph["evaluate"] if u.startswith("attack:")]
    # the numbers the README gives
    assert expected_jobs(cfg) == 34 and expected_jobs(cfg, seeds=3) == 102
    assert expected_jobs(load_config(CONFIGS / "qwen3-seed.yaml")) == 12
    assert expected_jobs(load_config(CONFIGS / "cpu-study.yaml")) == 86


def test_cluster_resources_per_stage_kind_and_stage(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": {
        "partition": "gpu", "account": "lab", "gpus_per_job": 1, "cpus_per_job": 8, "timeout_min": 120,
        "setup": ["source .venv/bin/activate"], "sbatch": {"qos": "normal"},
        "stages": {"data": {"gpus_per_job": 0, "cpus_per_job": 2}, "attack": {"timeout_min": 600},
                   "attack:vanilla": {"timeout_min": 900, "mem_gb": 32}}}}))
    cfg = load_config(path)
    assert stage_resources(cfg, "data").gpus_per_job == 0 and stage_resources(cfg, "data").cpus_per_job == 2
    assert stage_resources(cfg, "attack:orthogonal").timeout_min == 600
    assert stage_resources(cfg, "attack:vanilla").timeout_min == 900
    params = slurm_parameters(cfg, "attack:vanilla")
    assert params["time"] == 900 and params["gpus_per_node"] == 1 and params["cpus_per_task"] == 8
    assert params["partition"] == "gpu" and params["account"] == "lab" and params["mem"] == "32768M"
    assert params["additional_parameters"] == {"qos": "normal"}
    assert slurm_parameters(cfg, "data")["gpus_per_node"] is None
    check_cluster_stages(cfg)  # (that submitit takes these parameters: the fake-sbatch test below)


def test_the_slurm_executor_submits_a_stage_with_its_resources(tmp_path, monkeypatch):
    """A fake ``sbatch`` (and ``srun``) on PATH: the job script submitit writes carries the stage's resources."""
    pytest.importorskip("submitit")
    from orthoguard.parallel import Executor, Node

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\nfor last; do :; done\ncp \"$last\" {tmp_path}/submitted.sh\n"
                                    "echo 'Submitted batch job 4242'\n")
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "grid", "cluster": {
        "partition": "gpu", "cpus_per_job": 6, "timeout_min": 300, "setup": ["echo set-up-line"],
        "sbatch": {"qos": "high"}, "stages": {"attack": {"timeout_min": 600}, "data": {"gpus_per_job": 0}}}}))
    cfg = load_config(path)
    pool = Executor("slurm", tmp_path / "jobs", jobs=4)
    job = pool.submit(Node(cfg, tmp_path / "run", "attack:vanilla", []), 0, False)
    assert job.job_id == "4242"
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --time=600", "#SBATCH --qos=high", "#SBATCH --job-name=orthoguard-grid-attack-vanilla",
                 "echo set-up-line"):
        assert line in script, line
    pool.submit(Node(cfg, tmp_path / "run", "data", []), 1, False)  # nothing of the previous job's resources is left
    script = (tmp_path / "submitted.sh").read_text()
    assert "--gpus-per-node" not in script and "#SBATCH --time=300" in script and "--job-name=orthoguard-grid-data" in script


def test_cluster_keys_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": {"gpus": 2}}))
    with pytest.raises(ConfigError, match="unknown config key 'cluster.gpus'"):
        load_config(path)
    path.write_text(yaml.safe_dump({"cluster": {"stages": {"attack": {"gpu": 1}}}}))
    with pytest.raises(ConfigError, match="unknown config key 'cluster.stages.attack.gpu'"):
        load_config(path)
    path.write_text(yaml.safe_dump({"cluster": {"stages": {"atack": {"gpus_per_job": 1}}}}))
    with pytest.raises(ConfigError, match="cluster.stages: unknown stage 'atack'"):
        check_cluster_stages(load_config(path))


def test_the_cluster_section_is_in_no_stage_key(tmp_path):
    from orthoguard.pipeline import Run, _wired, planned_stages

    def keys(cfg):
        run = Run(cfg, tmp_path / "r")
        return {n: run._config_hash(n, s.payload(cfg, *v), up) for n, s, v, up, _, _ in _wired(run, planned_stages(cfg))}

    plain = load_config(CONFIGS / "cpu-demo.yaml")
    on_slurm = load_config(CONFIGS / "cpu-demo.yaml", {"cluster.partition": "gpu", "cluster.gpus_per_job": 2})
    assert keys(plain) == keys(on_slurm)


def test_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.yaml", "--jobs", "0"])
    assert exc.value.code == 2 and "--jobs: expects a positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Several writers of stages.json


def _record_many(root: str, worker: int, count: int) -> None:
    from orthoguard.config import ExperimentConfig
    from orthoguard.pipeline import Run

    run = Run(ExperimentConfig(), root)  # read once at start, like a worker: its view of the file is stale at once
    for i in range(count):
        run._record(f"attack:w{worker}-{i}", {"key": f"{worker}-{i}", "seconds": 0.0, "finished": "t"})


def test_concurrent_stage_records_are_all_kept(tmp_path):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_record_many, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    records = json.loads((tmp_path / "stages.json").read_text())
    assert set(records) == {f"attack:w{w}-{i}" for w in range(4) for i in range(15)}
    assert not list(tmp_path.glob(".stages.json.*.tmp")), "no temporary file is left behind"


# ---------------------------------------------------------------------------------------------------------
# Real runs


def _adapters(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.parent.name: load_file(p) for p in sorted(run.glob("adapters/*/adapter_model.safetensors"))}


@pytest.mark.slow
def test_two_local_workers_give_the_serial_runs_adapters_and_rates(tmp_path, tiny_model_dir, caplog):
    path = _config(tmp_path, tiny_model_dir)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["run", str(path), "--run-dir", str(serial)]) == 0
    caplog.clear()
    with caplog.at_level("INFO", logger="orthoguard.parallel"):
        assert main(["run", str(path), "--run-dir", str(parallel), "--jobs", "2"]) == 0
    submitted = [r.getMessage() for r in caplog.records if "submitted as job" in r.getMessage()]
    assert len(submitted) == len(stage_graph(load_config(path))) == 16  # one process per stage
    # each of the 6 models (base, aligned, 4 attacks) was evaluated in a process of its own
    assert sum("stage eval:" in m for m in submitted) == 6

    want, got = _adapters(serial), _adapters(parallel)
    assert set(want) == set(got) == {"refusal", "attack-vanilla", "attack-orthogonal", "attack-subspace",
                                     "attack-subspace-matched"}
    for name in want:
        assert want[name].keys() == got[name].keys()
        for key in want[name]:
            torch.testing.assert_close(got[name][key], want[name][key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    a = json.loads((serial / "results/summary.json").read_text())
    b = json.loads((parallel / "results/summary.json").read_text())
    assert a["models"] == b["models"] and a["mcnemar"] == b["mcnemar"] and a["categories"] == b["categories"]
    for model in a["utility"]:
        for field, value in a["utility"][model].items():
            assert b["utility"][model][field] == pytest.approx(value, abs=1e-6), (model, field)
    # the same records under the same config hashes (the keys also hash the input files, and training logs hold
    # their wall time), and the serial runner finds the parallel run up to date
    sa, sb = (json.loads((d / "stages.json").read_text()) for d in (serial, parallel))
    assert set(sa) == set(sb) and all(sa[n]["config"] == sb[n]["config"] for n in sa)
    assert sa["data"]["outputs"] == sb["data"]["outputs"]  # byte-identical splits
    assert main(["run", str(path), "--run-dir", str(parallel)]) == 0
    assert json.loads((parallel / "stages.json").read_text()) == sb


@pytest.mark.slow
def test_submitit_local_executor_runs_a_stage_to_completion(tmp_path, tiny_model_dir):
    import submitit

    cfg = load_config(_config(tmp_path, tiny_model_dir))
    run = tmp_path / "run"
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs" / "%j")
    executor.update_parameters(timeout_min=30, gpus_per_node=0)
    job = executor.submit(run_stage_job, cfg, str(run), "data", False, 1, None)
    assert job.result() == "data"
    records = json.loads((run / "stages.json").read_text())
    assert set(records) == {"data"} and (run / "data/splits.json").is_file()
    assert "stage data in process" in Path(job.paths.stderr).read_text()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker process through /proc")
def test_a_killed_worker_reruns_alone(tmp_path, tiny_model_dir):
    """SIGKILL the worker of one attack in the middle of its training: the driver lets the other stages finish, fails
    naming the stage, and the next `run --jobs 2` redoes only that attack (from its checkpoint), its evaluation and the
    summary."""
    variants = [{"name": "vanilla", "training": {"max_steps": 2}},
                {"name": "subspace", "mode": "orthogonal", "directions": "subspace", "at": "update"}]
    path = _config(tmp_path, tiny_model_dir, variants=variants, attack_training={"max_steps": 12, "save_steps": 3})
    run = tmp_path / "tiny"
    command = [sys.executable, "-m", "orthoguard", "run", str(path), "--jobs", "2"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    def read():
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        job = next((m.group(1) for line in list(lines) if (m := re.search(r"stage attack:subspace submitted as job (\d+)", line))), None)
        if job and any(run.glob(f"checkpoints/attack-subspace-*/checkpoint-6/{CHECKPOINT_STATE}")):  # complete
            workers = _children(int(job))  # submitit's controller -> the process running the stage
            assert workers, "no worker process found"
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed = workers
        time.sleep(0.01)
    proc.wait(timeout=300)
    reader.join(10)
    stderr = "".join(lines)
    assert killed, f"the worker was not killed mid-training: {stderr[-3000:]}"
    assert proc.returncode == 2, stderr[-3000:]
    assert "stage 'attack:subspace' failed" in stderr and "2 more stage(s) read from it and did not run" in stderr
    assert not (run / "adapters/attack-subspace").exists()
    first = json.loads((run / "stages.json").read_text())
    assert set(first) == {"data", "synth", "benign", "refusal", "directions", "attack:vanilla",
                          "eval:base", "eval:aligned", "eval:vanilla"}, "the others finished, nothing half-recorded"

    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads((run / "stages.json").read_text())
    assert set(after) == set(first) | {"attack:subspace", "eval:subspace", "evaluate"}
    assert all(after[n] == first[n] for n in first), "a completed stage was redone"
    submitted = re.findall(r"stage (\S+) submitted as job", done.stderr)
    assert sorted(submitted) == ["attack:subspace", "eval:subspace", "evaluate"]
    log = json.loads((run / "logs/training_loss_subspace.json").read_text())
    assert 6 <= log["resumed_from_step"] < 12 and [r["step"] for r in log["losses"]] == list(range(1, 13))
