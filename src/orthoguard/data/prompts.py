"""Prompt lists shipped with orthoguard (package data under ``orthoguard/assets``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from orthoguard.errors import DataError
from orthoguard.io import read_json

INSTRUCTION_SPLITS = ("train", "val", "test")


def asset_path(*parts: str) -> Path:
    # orthoguard is installed unzipped (editable or wheel), so the package files are real paths on disk.
    return Path(str(resources.files("orthoguard").joinpath("assets", *parts)))


def embedded_harmfulqa_path() -> Path:
    """The questions-only HarmfulQA file: ``{topic: {subtopic: [question, ...]}}``."""
    return asset_path("harmfulqa", "harmfulqa_questions.json")


def load_harmless(split: str) -> list[str]:
    """Alpaca instructions (CC BY-NC 4.0): ``train`` for refusal training, ``val`` for over-refusal evaluation."""
    return _load_instructions("harmless", split)


def load_harmful_instructions(split: str) -> list[str]:
    """Harmful instructions (AdvBench, HarmBench, …) from the refusal-direction splits."""
    return _load_instructions("harmful", split)


def _load_instructions(kind: str, split: str) -> list[str]:
    if split not in INSTRUCTION_SPLITS:
        raise DataError(f"unknown {kind} prompt split '{split}' (choose from {', '.join(INSTRUCTION_SPLITS)})")
    path = asset_path("refusal_direction_splits", f"{kind}_{split}.json")
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{instruction, category}} objects, got {type(rows).__name__}")
    return [_instruction(row, f"{path} row {index}") for index, row in enumerate(rows)]


def _instruction(row: object, where: str) -> str:
    text = row.get("instruction") if isinstance(row, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field 'instruction' is missing or empty")
    return text.strip()


def load_benign_references(n: int) -> list:
    """The first ``n`` AlpacaEval instructions with their reference answers (CC BY-NC 4.0), as chat samples."""
    from orthoguard.data.samples import single_turn

    path = asset_path("alpaca_eval", "alpaca_eval_ref_text_davinci_003.json")
    rows = read_json(path)[:n]
    return [single_turn(r["instruction"], r["output"], "alpaca-eval-reference") for r in rows if r.get("output", "").strip()]
