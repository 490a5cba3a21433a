"""Reading a run directory (one seed) or a multi-seed root, tolerant of absent, unreadable or malformed files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthoguard.errors import DataError
from orthoguard.rundir import Diagnostics, SeedsIndex, StageRecord, StageRecords, Summary, TrainLog


@dataclass
class RunData:
    """The files of one run directory (one seed), read through ``orthoguard.rundir``'s models; absent files are
    ``None``/empty, and what does not fit the schema is left out with a note."""

    path: Path
    seed: Any = None
    config: dict = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    logs: dict[str, TrainLog] = field(default_factory=dict)
    diagnostics: dict[str, Diagnostics] = field(default_factory=dict)  # logs/diagnostics_<variant>.json
    summary: Summary | None = None
    notes: list[str] = field(default_factory=list)
    stale: dict[str, str] = field(default_factory=dict)  # stage -> why its outputs are not this config's


def load_run(path: str | Path, seed: Any = None) -> RunData:
    import yaml

    path = Path(path)
    run = RunData(path=path, seed=seed)
    cfg_path = path / "config.resolved.yaml"
    if cfg_path.is_file():
        try:
            run.config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            run.notes.append(f"skipped an unreadable config.resolved.yaml in {path}: {exc.__class__.__name__}")
    stages = StageRecords.salvage(path / "stages.json", run.notes)
    run.stages = stages.root if stages is not None else {}
    for log_path in sorted((path / "logs").glob("training_loss_*.json")):
        if (record := TrainLog.salvage(log_path, run.notes)) is not None:
            run.logs[log_path.stem.removeprefix("training_loss_")] = record
    for diag_path in sorted((path / "logs").glob("diagnostics_*.json")):
        if (record := Diagnostics.salvage(diag_path, run.notes)) is not None:
            run.diagnostics[diag_path.stem.removeprefix("diagnostics_")] = record
    run.summary = Summary.salvage(path / "results" / "summary.json", run.notes)
    _leave_out_stale(run)
    if run.seed is None:
        run.seed = run.summary.seed if run.summary is not None and run.summary.seed is not None else run.config.get("seed")
    return run


def _leave_out_stale(run: RunData) -> None:
    """Only what the recorded config made is shown: stages whose outputs another config (or changed inputs)
    made are listed in ``run.stale`` and their logs and results are left out, with a note."""
    from orthoguard.config import ExperimentConfig
    from orthoguard.pipeline import stage_status

    if not run.config:
        return
    try:
        status = stage_status(ExperimentConfig.model_validate(run.config), run.path)
    except Exception as exc:  # an older or hand-edited config: say so rather than guess
        run.notes.append(f"could not check which stages are current ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        return
    # only records the pipeline wrote (they hold a config hash) can be checked; a hand-made record is taken as is
    run.stale = {name: reason for name, reason in status.items()
                 if reason is not None and name in run.stages and run.stages[name].config is not None}
    missing = [name for name, reason in status.items() if reason == "never ran"]
    for name, reason in run.stale.items():
        if name == "evaluate" and run.summary is not None:
            run.summary = None
            run.notes.append(f"results/summary.json left out: the evaluation is stale for config.resolved.yaml "
                             f"({reason}); `orthoguard run` with that config reruns what changed")
        variant = name.removeprefix("attack:")
        if name.startswith("attack:") and variant in run.logs:
            del run.logs[variant]
            run.diagnostics.pop(variant, None)
            run.notes.append(f"the training log of '{variant}' left out: its attack stage is stale ({reason})")
    if missing:
        run.notes.append(f"not run yet for this config: {', '.join(missing)}")


def load_runs(root: str | Path) -> tuple[list[RunData], list[str]]:
    """The run directories under ``root``: its ``seed-<s>/`` folders when it is a multi-seed root, else itself."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"run directory not found: {root}")
    notes: list[str] = []
    seeds_file = root / "seeds.json"
    entries: list[tuple[Any, Path]] = []
    if seeds_file.is_file():
        index = SeedsIndex.read(seeds_file)
        for s in index.seeds:
            entries.append((s, root / index.runs.get(str(s), f"seed-{s}")))
    else:
        for d in sorted(root.glob("seed-*"), key=lambda p: _natural(p.name)):
            if d.is_dir():
                entries.append((_seed_value(d.name.removeprefix("seed-")), d))
        if entries:
            notes.append("no seeds.json: aggregated the seed-* folders found")
    if not entries:
        return [load_run(root)], notes
    runs_out = []
    for s, d in entries:
        if not d.is_dir():
            notes.append(f"seed {s}: folder {d.name} is missing, left out")
            continue
        runs_out.append(load_run(d, seed=s))
    if not runs_out:
        raise DataError(f"{root}: seeds.json lists no run directory that exists")
    return runs_out, notes


def _seed_value(text: str) -> Any:
    return int(text) if text.isdigit() else text


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
