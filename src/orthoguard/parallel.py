"""Independent stages at once: ``orthoguard run CONFIG --jobs N`` (local processes) and ``--executor slurm``.

The stages' declarations (``upstream`` in ``orthoguard.stages``) make a graph: every attack variant reads only
data, synth, refusal and the direction files (a matched control also its defence, a post-hoc defence the vanilla
attack it is applied to), each model's evaluation (``eval:<model>``) only its adapters, and ``evaluate`` (the
summary) every model's evaluation. This module walks that graph and hands every stage whose upstream stages are done to a submitit
executor, one process (or SLURM job) per stage:

- ``local``: submitit's ``LocalExecutor``, at most ``--jobs`` stages at once; on a GPU machine each worker sees
  one GPU (``CUDA_VISIBLE_DEVICES``, round-robin over the visible ones), and the CPU's threads are split between
  the workers (``hardware.configure_threads(max(1, cores // jobs))``).
- ``slurm``: submitit's ``SlurmExecutor``, one SLURM job per stage with the resources of the config's
  ``cluster`` section (per stage kind or stage: ``cluster.stages``); the driver (this process) stays running and
  submits each stage when its upstream jobs have finished.

A worker runs the ordinary pipeline restricted to its one stage (``run_pipeline(..., only={stage}, exact=True)``),
so keys, skip decisions, checkpoints and ``stages.json`` records are computed by the same code as the serial run,
and a worker refuses when a stage it reads from is not up to date. Several workers record into one
``stages.json`` under a file lock (``pipeline.Run._record``); a worker that dies mid-stage records nothing, its
stage reruns (resuming from its newest checkpoint) on the next ``run``, and the stages that were done are skipped
without starting a process. The driver skips up-to-date stages itself (no process for them), submits nothing that
reads from a failed stage, lets the independent ones finish, and then fails with one line naming the first
failed stage and its log.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthoguard.config import ExperimentConfig, StageResources, dump_config
from orthoguard.errors import ConfigError, OrthoguardError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
LOCAL_TIMEOUT_MIN = 60 * 24 * 30  # submitit's local default (2 minutes) would kill every training stage


@dataclass
class Node:
    """One stage of one run directory, and the stages (of the same run) it reads from."""

    cfg: ExperimentConfig
    run_dir: Path
    name: str
    upstream: list[str]

    @property
    def id(self) -> tuple[str, str]:
        return (str(self.run_dir), self.name)

    def deps(self) -> list[tuple[str, str]]:
        return [(str(self.run_dir), u) for u in self.upstream]


def stage_graph(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Stage name -> the stages it reads from, for every stage ``cfg`` runs, in the serial run's order."""
    from orthoguard.pipeline import planned_stages

    steps = planned_stages(cfg)
    names = {name for name, _, _ in steps}
    return {name: [u for u in s.upstream_of(cfg, *variant) if u in names] for name, s, variant in steps}


def expected_jobs(cfg: ExperimentConfig, seeds: int = 1) -> int:
    """How many stage jobs a fresh run of ``cfg`` submits (one per stage, per seed)."""
    return len(stage_graph(cfg)) * seeds


def stage_resources(cfg: ExperimentConfig, name: str) -> StageResources:
    """The resources of one stage's job: ``cluster`` defaults, then ``cluster.stages[<kind>]``, then
    ``cluster.stages[<stage>]``."""
    c = cfg.cluster
    merged = {"gpus_per_job": c.gpus_per_job, "cpus_per_job": c.cpus_per_job, "mem_gb": c.mem_gb,
              "timeout_min": c.timeout_min}
    for key in (name.split(":")[0], name):
        if key in c.stages:
            merged.update(c.stages[key].model_dump(exclude_none=True))
    return StageResources(**merged)


def check_cluster_stages(cfg: ExperimentConfig) -> None:
    """``cluster.stages`` names stage kinds or stages of this config; anything else is a one-line error."""
    from orthoguard.stages import STAGES

    known = set(stage_graph(cfg)) | {s.name for s in STAGES}
    unknown = sorted(set(cfg.cluster.stages) - known)
    if unknown:
        raise ConfigError(f"cluster.stages: unknown stage '{unknown[0]}' (stage kinds: "
                          f"{', '.join(s.name for s in STAGES)}, or a stage such as 'attack:<variant>')")


def slurm_parameters(cfg: ExperimentConfig, name: str) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments of one stage's job: every key, None where unset (the
    executor keeps parameters between submissions, so none may be left over from the previous stage's job)."""
    c, r = cfg.cluster, stage_resources(cfg, name)
    return {
        "job_name": f"orthoguard-{cfg.name}-{name.replace(':', '-')}",
        "time": r.timeout_min, "cpus_per_task": r.cpus_per_job, "ntasks_per_node": 1, "nodes": 1,
        "gpus_per_node": r.gpus_per_job or None,
        "mem": f"{math.ceil(r.mem_gb * 1024)}M" if r.mem_gb is not None else None,
        "partition": c.partition, "account": c.account,
        "setup": list(c.setup) or None, "additional_parameters": dict(c.sbatch) or None,
    }


def run_stage_job(cfg: ExperimentConfig, run_dir: str, name: str, force: bool = False, threads: int | None = None,
                  device: str | None = None) -> str:
    """The body of one worker (a submitit job): the ordinary pipeline restricted to stage ``name``."""
    if device is not None:  # before torch initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    if threads is not None and cfg.threads is None:
        os.environ["ORTHOGUARD_THREADS"] = str(threads)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from orthoguard.hardware import prepare_environment

    prepare_environment()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from orthoguard.pipeline import run_pipeline

    log.info("stage %s in process %d (threads %s, CUDA_VISIBLE_DEVICES=%s)", name, os.getpid(),
             os.environ.get("ORTHOGUARD_THREADS", "default"), os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    run_pipeline(cfg, run_dir, force=force, only={name}, exact=True)
    return name


try:  # submitit is the optional `cluster` extra: without it only the serial run is available
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover
    _Checkpointable = object


class StageJob(_Checkpointable):
    """``run_stage_job`` as a submitit ``Checkpointable``: a job that SLURM pre-empts or times out is requeued with
    the same arguments (up to the executor's ``max_num_timeout``), and its stage resumes from its newest training
    checkpoint."""

    def __call__(self, *args, **kwargs) -> str:
        return run_stage_job(*args, **kwargs)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (ids or UUIDs); none on a CPU machine."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no usable CUDA: a CPU machine
        return []


class Executor:
    """submitit underneath: ``local`` (its LocalExecutor, one process per stage) or ``slurm``."""

    def __init__(self, kind: str, folder: Path, jobs: int):
        try:
            import submitit
        except ImportError:
            raise OrthoguardError("--jobs and --executor run stages through submitit, which is not installed: "
                                  "pip install 'orthoguard[cluster]' (or pip install submitit)") from None

        if kind not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, not '{kind}'")
        self.kind, self.jobs = kind, jobs
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "local":
            from orthoguard.hardware import default_threads

            self.gpus = visible_gpus()
            self.threads = max(1, default_threads() // jobs)
            self.executor = submitit.LocalExecutor(folder=folder / "%j")
        else:
            self.gpus, self.threads = [], None
            try:
                self.executor = submitit.SlurmExecutor(folder=folder / "%j")
            except RuntimeError as exc:  # no srun on this machine
                raise OrthoguardError(f"--executor slurm: {exc} (run the driver where sbatch and srun work)") from None

    def submit(self, node: Node, slot: int, force: bool):
        if self.kind == "local":
            self.executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=0)
            device = self.gpus[slot % len(self.gpus)] if self.gpus else None
            threads = self.threads
        else:
            self.executor.update_parameters(**slurm_parameters(node.cfg, node.name))
            device, threads = None, stage_resources(node.cfg, node.name).cpus_per_job
        return self.executor.submit(StageJob(), node.cfg, str(node.run_dir), node.name, force, threads, device)

    @property
    def poll_seconds(self) -> float:
        return 0.5 if self.kind == "local" else 15.0


def _up_to_date(node: Node) -> bool:
    """Whether the stage's outputs are what this config makes from its (finished) upstream stages' files: the
    same check as ``pipeline.Run.stage``, without starting a process."""
    from orthoguard.pipeline import Run, _wired, planned_stages

    run = Run(node.cfg, node.run_dir)
    for name, s, variant, upstream, inputs, outputs in _wired(run, planned_stages(node.cfg)):
        if name == node.name:
            return run.stage_reason(name, s.payload(node.cfg, *variant), upstream, outputs, inputs) is None
        run._config_hash(name, s.payload(node.cfg, *variant), upstream)
    return False


def _failure_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line or "error:" in line]
    return (errors or lines or [type(exc).__name__])[-1]


@dataclass
class _Progress:
    done: set = field(default_factory=set)
    failed: dict = field(default_factory=dict)  # id -> (message, log path)
    blocked: set = field(default_factory=set)
    ran: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


def run_parallel(cfg: ExperimentConfig, output_dir: str | Path | None = None, jobs: int | None = None,
                 executor: str = "local", force: bool = False, seeds: list[int] | None = None) -> Path:
    """Every stage of ``cfg`` (of every seed in ``seeds``: one run directory each, as ``run_seeds``), each in its own
    process or SLURM job, at most ``jobs`` at once (SLURM: every ready stage unless ``jobs`` is given), a stage
    as soon as the stages it reads from are done. Returns the run directory (the seeds' root with ``seeds``)."""
    from orthoguard.io import check_writable_dir, write_text
    from orthoguard.pipeline import Run
    from orthoguard.rundir import SeedsIndex
    from orthoguard.stages import preflight

    root = Path(output_dir or cfg.output_dir)
    check_writable_dir(root, "run directory")
    runs = [(cfg.model_copy(update={"seed": s}), root / f"seed-{s}") for s in seeds] if seeds else [(cfg, root)]
    check_cluster_stages(cfg)
    nodes: dict[tuple[str, str], Node] = {}
    for c, run_dir in runs:  # everything checkable before the first job: splits, prompt sets, mixtures
        check_writable_dir(run_dir, "run directory")
        preflight(Run(c, run_dir))
        write_text(run_dir / "config.resolved.yaml", dump_config(c))
        for name, upstream in stage_graph(c).items():
            node = Node(c, run_dir, name, upstream)
            nodes[node.id] = node
    if jobs is None:
        jobs = len(nodes) if executor == "slurm" else 1
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {jobs}")
    pool = Executor(executor, root / "jobs", jobs)
    log.info("%d stages, %s executor, up to %d at once%s", len(nodes), executor, jobs,
             f" (GPUs {','.join(pool.gpus)})" if pool.gpus else "")
    progress = _drive(nodes, pool, jobs, force)
    if progress.failed:
        (run_dir, name), (message, log_path) = next(iter(progress.failed.items()))
        where = f" in {run_dir}" if seeds else ""
        raise OrthoguardError(
            f"stage '{name}'{where} failed: {message} (log: {log_path})"
            + (f"; {len(progress.failed) - 1} more failed" if len(progress.failed) > 1 else "")
            + (f"; {len(progress.blocked)} more stage(s) read from {'them' if len(progress.failed) > 1 else 'it'}"
               " and did not run" if progress.blocked else "")
            + "; run the same command again to redo only what is missing")
    if seeds:
        SeedsIndex(seeds=seeds, runs={str(s): f"seed-{s}" for s in seeds}).write(root / "seeds.json")
    log.info("%d stages ran, %d were up to date", len(progress.ran), len(progress.skipped))
    return root


def _drive(nodes: dict[tuple[str, str], Node], pool: Executor, jobs: int, force: bool) -> _Progress:
    p = _Progress()
    pending = list(nodes)  # in the serial order: ties go to the stage the serial run would run first
    running: dict[tuple[str, str], tuple[Any, int]] = {}
    free = list(range(jobs))
    checked: dict[tuple[str, str], bool] = {}
    try:
        while pending or running:
            changed = False
            for nid, (job, slot) in list(running.items()):
                if not job.done():
                    continue
                changed = True
                del running[nid]
                free.append(slot)
                try:
                    job.result()
                except Exception as exc:  # noqa: BLE001 - a failed or killed stage: recorded, reported at the end
                    p.failed[nid] = (_failure_line(exc), _log_path(job))
                    log.error("stage %s failed (job %s): %s", nid[1], job.job_id, p.failed[nid][0])
                else:
                    p.done.add(nid)
                    p.ran.append(nid)
                    log.info("stage %s done (job %s)", nid[1], job.job_id)
            for nid in list(pending):
                deps = nodes[nid].deps()
                if any(d in p.failed or d in p.blocked for d in deps):
                    pending.remove(nid)
                    p.blocked.add(nid)
                    changed = True
                    continue
                if not all(d in p.done for d in deps):
                    continue
                if nid not in checked:  # once: its inputs are final when the stages it reads from are done
                    checked[nid] = not force and _up_to_date(nodes[nid])
                if checked[nid]:
                    pending.remove(nid)
                    p.done.add(nid)
                    p.skipped.append(nid)
                    log.info("stage %-20s up to date, skipped", nid[1])
                    changed = True
                    continue
                if not free:
                    continue
                slot = free.pop(0)
                job = pool.submit(nodes[nid], slot, force)
                running[nid] = (job, slot)
                pending.remove(nid)
                changed = True
                log.info("stage %s submitted as job %s", nid[1], job.job_id)
            if not changed:
                time.sleep(pool.poll_seconds)
    except BaseException:
        for job, _ in running.values():  # never leave workers behind (interrupted driver, a bug)
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001
                pass
        raise
    return p


def _log_path(job) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:  # noqa: BLE001
        return "?"
