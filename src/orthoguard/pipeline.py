"""The experiment as a list of stages over one run directory: the runner and its bookkeeping.

    data -> synth -> benign -> refusal -> directions [-> blue, red, blue-red] -> attack:<variant>... -> evaluate

The stages, their bodies and what each reads and writes are declared in ``orthoguard.stages``. Each stage writes
its outputs under ``<output_dir>`` and records in ``stages.json`` a hash of the config values its declaration
names (chained through the stages it reads from) and sha256 fingerprints of its input files and of the outputs
it wrote. A stage is skipped only when all three still match: a changed config, a changed input (a replaced
adapter, an edited data file, another local model) or an output edited or damaged since it was written makes
the stage, and the stages that read it, run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from orthoguard import data as D
from orthoguard import distributed
from orthoguard.config import ExperimentConfig, dump_config
from orthoguard.errors import ConfigError, OrthoguardError
from orthoguard.io import check_writable_dir, file_lock, fingerprint, write_text
from orthoguard.hardware import configure_threads, openmp_wait
from orthoguard.models import resolve_precision
from orthoguard.provenance import versions
from orthoguard.rundir import SeedsIndex, StageRecords
from orthoguard.modes import defence_of, matched_control_directions, mean_removed_share  # noqa: F401 (re-exported)
from orthoguard.stages import (  # noqa: F401 (re-exported: ``from orthoguard.pipeline import ...``)
    BENIGN_SET, HARMFUL_SET, STAGES, Stage, attack_samples, attacked_adapters, blue_red_families, build_attack_samples,
    direction_keys, evaluated_adapters, evaluated_models, family_directions, has_regularized, hold_out_probes,
    load_splits, preflight, probe_count, run_facts, stage_attack, stage_benign, stage_blue_red, stage_blue_red_directions,
    stage_data, stage_directions, stage_evaluate, stage_refusal, stage_synth, synth_questions, synthesize, utility_data)

log = logging.getLogger(__name__)


class Run:
    """Paths of one run directory, and the stage bookkeeping."""

    def __init__(self, cfg: ExperimentConfig, output_dir: str | Path | None = None, paths: dict[str, str | Path] | None = None):
        self.cfg = cfg
        self.root = Path(output_dir or cfg.output_dir)
        # explicit locations for single-step commands that follow the seed's layout ("adapter:<name>", "directions")
        self.paths = {k: Path(v) for k, v in (paths or {}).items()}
        self.stages_path = self.root / "stages.json"
        self.stages: dict[str, Any] = StageRecords.read(self.stages_path).model_dump(mode="json", exclude_none=True) \
            if self.stages_path.is_file() else {}
        self._keys: dict[str, str] = {}
        self.running: tuple[str, str] | None = None  # (stage, key) of the stage in progress
        self._rows: dict[tuple[str, str], list] = {}
        self._attack_samples: list | None = None

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def adapter(self, name: str) -> Path:
        return self.paths.get(f"adapter:{name}", self.path("adapters", name))

    def log_path(self, mode: str) -> Path:
        return self.path("logs", f"training_loss_{mode}.json")

    def directions_path(self, key: str) -> Path:
        """The direction file of a family ("subspace") or of its random control ("random-subspace")."""
        return self.paths.get("directions", self.path("directions", f"refusal.{key}.safetensors"))

    def checkpoint_dir(self) -> Path:
        """Where the stage in progress keeps its training checkpoints: ``<stage>-<key>``, so a changed config or
        input never resumes from a checkpoint of another one."""
        if self.running is None:
            raise RuntimeError("checkpoint_dir() outside a stage")
        name, key = self.running
        return self.path("checkpoints", f"{name.replace(':', '-')}-{key}")

    def _drop_stale_checkpoints(self) -> None:
        """Checkpoints of the running stage under an older key can never be resumed."""
        current = self.checkpoint_dir()
        stage = current.name.rsplit("-", 1)[0]
        for folder in current.parent.glob(f"{stage}-*"):
            if folder != current and folder.name.rsplit("-", 1)[0] == stage:
                shutil.rmtree(folder, ignore_errors=True)

    def snapshot_dir(self, variant: str) -> Path:
        """Where an attack keeps its LoRA at each probe step for the post-hoc defences applied to it."""
        return self.path("snapshots", variant)

    def diagnostics_path(self, variant: str) -> Path:
        """Where an attack's weight-space diagnostics go (older runs kept them in its training log)."""
        return self.path("logs", f"diagnostics_{variant}.json")

    def direction_keys(self) -> list[str]:
        return direction_keys(self.cfg)

    def harmfulqa(self) -> list:
        """The HarmfulQA rows of ``data.source``, loaded once per run."""
        key = (self.cfg.data.source, self.cfg.data.hub_split)
        if key not in self._rows:
            self._rows[key] = D.load_harmfulqa(*key)
        return self._rows[key]

    def attack_samples(self) -> list:
        """The attack training set, built once per run (after the synth stage; every variant trains on it)."""
        if self._attack_samples is None:
            self._attack_samples = build_attack_samples(self)
        return self._attack_samples

    def stage_reason(self, name: str, payload: Any, upstream: list[str], outputs: list[Path],
                     inputs: list[Path] = ()) -> str | None:
        """Why the stage would run now (``"never ran"``, ``"config changed"``, ...), or None when it is up to date;
        runs nothing, writes nothing (``stage_status`` and the step commands' checks use it)."""
        config_hash = self._config_hash(name, payload, upstream)
        input_prints = {self._label(p): fingerprint(p) for p in dict.fromkeys(inputs)}
        return self._why_redo(self.stages.get(name), config_hash, input_prints, {self._label(p): p for p in outputs})

    def _config_hash(self, name: str, payload: Any, upstream: list[str]) -> str:
        blob = json.dumps({"seed": self.cfg.seed, "payload": payload, "upstream": [self._keys[u] for u in upstream]},
                          sort_keys=True, default=str)
        self._keys[name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._keys[name]

    def stage(self, name: str, payload: Any, upstream: list[str], outputs: list[Path], fn: Callable[[], Any],
              force: bool = False, enabled: bool = True, inputs: list[Path] = ()):
        """Run ``fn`` unless it ran before with the same config and the same input files, and its outputs are
        still the files it wrote; then record the config hash and the inputs' and outputs' fingerprints.

        The config hash covers the stage's config sections and those of the stages it reads from; ``inputs``
        are files it reads (upstream outputs, a local model or data file). A stage that is not ``enabled`` only
        computes its config hash, so that the stages after it can chain on it.
        """
        config_hash = self._config_hash(name, payload, upstream)
        if not enabled:
            return "not selected"
        input_prints = {self._label(p): fingerprint(p) for p in dict.fromkeys(inputs)} if distributed.is_main() else {}
        key = hashlib.sha256(json.dumps([config_hash, input_prints], sort_keys=True).encode()).hexdigest()[:16]
        reason = "forced" if force else self._why_redo(self.stages.get(name), config_hash, input_prints,
                                                        {self._label(p): p for p in outputs})
        key, reason = distributed.broadcast((key, reason))  # every rank follows rank 0's decision
        if reason is None:
            log.info("stage %-20s up to date, skipped", name)
            return "skipped"
        log.info("stage %-20s running (%s)", name, reason)
        start = time.perf_counter()
        self.running = (name, key)
        if distributed.is_main():
            self._drop_stale_checkpoints()
        _run_on_ranks(fn, every_rank=name.split(":")[0] in TRAINING_STAGES)
        self.running = None
        if distributed.is_main():
            self._record(name, {
                "key": key,
                "config": config_hash,
                "inputs": input_prints,
                "outputs": {self._label(p): fingerprint(p) for p in outputs},
                "seconds": round(time.perf_counter() - start, 1),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "versions": versions(),
            })
        return "ran"

    def _record(self, name: str, record: dict) -> None:
        """Write stage ``name``'s record into ``stages.json``. Several processes may finish stages of one run at
        once (``orthoguard run --jobs N``, SLURM jobs): under a lock, the file is read again and only this stage's
        record is replaced, so no process drops another's; the write itself is atomic (temp file + rename), so a
        process killed mid-stage leaves no record of that stage and it reruns."""
        with file_lock(self.root / ".stages.json.lock"):
            current = StageRecords.read(self.stages_path).model_dump(mode="json", exclude_none=True) \
                if self.stages_path.is_file() else {}
            current[name] = record
            StageRecords.parse(current, self.stages_path).write(self.stages_path)
            self.stages = current

    def _label(self, path: Path) -> str:
        """How stages.json names a file: relative to the run directory when inside it, so a moved or copied run
        directory stays up to date."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(Path(path).resolve())

    @staticmethod
    def _why_redo(done: dict | None, config_hash: str, input_prints: dict[str, str], outputs: dict[str, Path]) -> str | None:
        if not done:
            return "never ran"
        if done.get("config") != config_hash:
            return "config changed"
        changed = [p for p, fp in input_prints.items() if done.get("inputs", {}).get(p) != fp]
        if changed:
            return f"input changed: {changed[0]}" + (f" and {len(changed) - 1} more" if len(changed) > 1 else "")
        written = done.get("outputs", {})
        for label, path in outputs.items():
            if not path.exists():
                return f"output missing: {path}"
            if written.get(label) != fingerprint(path):
                log.warning("%s is not the file its stage wrote (edited, truncated or damaged): not trusted", path)
                return f"output changed since written: {path}"
        return None


# stages that train: under a multi-process launcher every rank runs them (DDP); the others run on rank 0 only
TRAINING_STAGES = {"refusal", "blue", "red", "attack"}


def _run_on_ranks(fn: Callable[[], Any], every_rank: bool) -> None:
    """Run a stage body on every rank, or on rank 0 while the others wait for its files; a failure on rank 0
    stops the others too, with its message. (When a rank fails in a training stage, the launcher stops the rest.)"""
    if every_rank or not distributed.active():
        fn()
        return
    failure = None
    if distributed.is_main():
        try:
            fn()
        except Exception as exc:  # re-raised below, after the other ranks have been told
            failure = exc
    message = distributed.broadcast(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise OrthoguardError(f"rank 0 failed: {message}")


# --------------------------------------------------------------------------------------------------------
# The whole run


def run_seeds(cfg: ExperimentConfig, seeds: list[int], output_dir: str | Path | None = None, force: bool = False) -> Path:
    """One full run per seed under ``<output_dir>/seed-<s>/``, and ``seeds.json`` listing them."""
    root = Path(output_dir or cfg.output_dir)
    check_writable_dir(root, "run directory")
    for seed in seeds:
        run_pipeline(cfg.model_copy(update={"seed": seed}), root / f"seed-{seed}", force=force)
    if distributed.is_main():
        SeedsIndex(seeds=seeds, runs={str(s): f"seed-{s}" for s in seeds}).write(root / "seeds.json")
    return root


def run_pipeline(
    cfg: ExperimentConfig,
    output_dir: str | Path | None = None,
    force: bool = False,
    only: set[str] | None = None,
    paths: dict[str, str | Path] | None = None,
    exact: bool = False,
) -> Run:
    """Run every stage in order (or only those named in ``only``: "data", "attack:vanilla", "attack", …; with
    ``exact``, a kind such as "attack" names no variant: the stage workers of ``orthoguard.parallel``)."""
    distributed.init(cpu=resolve_precision(cfg.model.dtype).device == "cpu")
    log.info("torch threads %d; OpenMP waits: %s", configure_threads(cfg.threads), openmp_wait())
    run = Run(cfg, output_dir, paths)
    check_writable_dir(run.root, "run directory")
    preflight(run)
    steps = planned_stages(cfg)
    selected = {name for name, _, _ in steps
                if only is None or name in only or (not exact and name.split(":")[0] in only)}
    if only is not None and not paths:  # the seed's step commands name their inputs' files themselves
        _refuse_stale_upstream(run, steps, selected)
    run.root.mkdir(parents=True, exist_ok=True)
    if distributed.is_main() and (only is None or not run.path("config.resolved.yaml").is_file()):
        write_text(run.path("config.resolved.yaml"), dump_config(cfg))
    for name, s, variant, upstream, inputs, outputs in _wired(run, steps, progress=True):
        run.stage(name, s.payload(cfg, *variant), upstream, outputs, lambda s=s, v=variant: s.body(run, *v),
                  force=force, enabled=name in selected, inputs=inputs)
    return run


def _wired(run: Run, steps: list[tuple[str, Stage, tuple]], progress: bool = False):
    """(name, declaration, variant, upstream stages, input files, output files) of each step, in order."""
    from tqdm.auto import tqdm

    produced = {name: s.outputs(run, *variant) for name, s, variant in steps}
    for name, s, variant in tqdm(steps, desc=f"orthoguard run {run.cfg.name}", unit="stage", disable=not progress):
        upstream = s.upstream_of(run.cfg, *variant)
        inputs = [p for u in upstream for p in produced[u]] + s.external_files(run.cfg)
        yield name, s, variant, upstream, inputs, produced[name]


def stage_status(cfg: ExperimentConfig, output_dir: str | Path) -> dict[str, str | None]:
    """Stage name -> why it is not up to date for ``cfg`` in ``output_dir`` ("never ran", "config changed", an
    input or output changed), or None when its outputs are what this config makes. Runs and writes nothing."""
    run = Run(cfg, output_dir)
    steps = planned_stages(cfg)
    return {name: run.stage_reason(name, s.payload(cfg, *variant), upstream, outputs, inputs)
            for name, s, variant, upstream, inputs, outputs in _wired(run, steps)}


def _refuse_stale_upstream(run: Run, steps, selected: set[str]) -> None:
    """A step command (``evaluate``, ``train-attack``) runs only its own stages: every stage they read from must
    be up to date for this config, or their results would be recorded under a config that did not make them."""
    status = stage_status(run.cfg, run.root)
    upstream = {name: set(s.upstream_of(run.cfg, *variant)) for name, s, variant in steps}
    needed: set[str] = set()
    todo = [u for name in selected for u in upstream[name]]
    while todo:
        u = todo.pop()
        if u not in needed:
            needed.add(u)
            todo += upstream.get(u, ())
    stale = [u for u, _, _ in steps if u in needed - selected and status.get(u)]
    if stale:
        raise ConfigError(f"stage '{stale[0]}' is not up to date for this config ({status[stale[0]]})"
                          + (f", nor {len(stale) - 1} more" if len(stale) > 1 else "")
                          + ": run `orthoguard run` with this config first (it reruns what changed)")


def planned_stages(cfg: ExperimentConfig) -> list[tuple[str, Stage, tuple]]:
    """(name, declaration, (variant,) or ()) of every stage this config runs, in order; a matched control is sized
    from its defence's training, and a post-hoc defence applied to a vanilla attack's snapshots, so both come after
    every variant that trains."""
    from orthoguard.defences.posthoc import source_of

    steps = []
    for s in STAGES:
        if s.when is not None and not s.when(cfg):
            continue
        if s.per_variant:
            for v in sorted(cfg.attack.variants, key=lambda v: v.random == "matched" or source_of(cfg, v) is not None):
                steps.append((f"{s.name}:{v.name}", s, (v,)))
        elif s.per_model:
            for model in evaluated_models(cfg):
                steps.append((f"{s.name}:{model}", s, (model,)))
        else:
            steps.append((s.name, s, ()))
    return steps


def external_inputs(cfg: ExperimentConfig, stage: str) -> list[Path]:
    """Files outside the run directory that a stage reads (its declaration's ``files``): a local model folder, a
    local data file, user prompt files. Hub ids and the embedded model are identified by name in the config hash."""
    kind = stage.split(":")[0]
    return next((s.external_files(cfg) for s in STAGES if s.name == kind), [])
