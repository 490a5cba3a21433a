"""Reading a run directory (one seed) or a multi-seed root, tolerant of absent, unreadable or malformed files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthoguard.errors import DataError
from orthoguard.io import read_json


@dataclass
class RunData:
    """The files of one run directory (one seed); absent or unreadable files are ``None``/empty with a note."""

    path: Path
    seed: Any = None
    config: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    logs: dict[str, dict] = field(default_factory=dict)
    diagnostics: dict[str, dict] = field(default_factory=dict)  # logs/diagnostics_<variant>.json
    summary: dict | None = None
    notes: list[str] = field(default_factory=list)


def _try_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except DataError as exc:
        notes.append(f"skipped an unreadable file: {exc}")
        return None


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
    run.stages = _try_json(path / "stages.json", run.notes) or {}
    for log_path in sorted((path / "logs").glob("training_loss_*.json")):
        record = _try_json(log_path, run.notes)
        if isinstance(record, dict):
            run.logs[log_path.stem.removeprefix("training_loss_")] = record
    for diag_path in sorted((path / "logs").glob("diagnostics_*.json")):
        record = _try_json(diag_path, run.notes)
        if isinstance(record, dict):
            run.diagnostics[diag_path.stem.removeprefix("diagnostics_")] = record
    summary = _try_json(path / "results" / "summary.json", run.notes)
    run.summary = _clean_summary(summary, path, run.notes) if isinstance(summary, dict) else None
    if run.seed is None:
        run.seed = (run.summary or {}).get("seed", run.config.get("seed"))
    return run


SUMMARY_SHAPES = {"prompt_sets": dict, "models": dict, "utility": dict, "mcnemar": dict, "diagnostics": dict,
                  "controls": dict, "harmful_sets": list, "benign_sets": list}


def _clean_summary(summary: dict, path: Path, notes: list[str]) -> dict:
    """Drop the fields of results/summary.json whose type is not the schema's (with a note), and models whose
    entry is not a mapping of sets, so that later code may trust the shapes."""
    out = dict(summary)
    for key, kind in SUMMARY_SHAPES.items():
        if key in out and not isinstance(out[key], kind):
            notes.append(f"{path / 'results' / 'summary.json'}: '{key}' is not a {kind.__name__}, ignored")
            del out[key]
    models = out.get("models") or {}
    out["models"] = {m: {k: v for k, v in per.items() if isinstance(v, dict)} for m, per in models.items() if isinstance(per, dict)}
    for key in ("utility", "diagnostics"):
        if key in out:
            out[key] = {m: v for m, v in out[key].items() if isinstance(v, dict)}
    return out


def load_runs(root: str | Path) -> tuple[list[RunData], list[str]]:
    """The run directories under ``root``: its ``seed-<s>/`` folders when it is a multi-seed root, else itself."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"run directory not found: {root}")
    notes: list[str] = []
    seeds_file = root / "seeds.json"
    entries: list[tuple[Any, Path]] = []
    if seeds_file.is_file():
        spec = read_json(seeds_file)
        runs = spec.get("runs", {}) if isinstance(spec, dict) else {}
        for s in (spec.get("seeds") if isinstance(spec, dict) else None) or []:
            entries.append((s, root / runs.get(str(s), f"seed-{s}")))
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
