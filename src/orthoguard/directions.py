"""Refusal directions in parameter space, saved as safetensors with metadata.

Family ``lora_factors`` is the seed's definition: every LoRA tensor (A and B of each target module) of the
refusal adapter, divided by its Frobenius norm.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from orthoguard.errors import DirectionError
from orthoguard.io import atomic_path

_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")
FAMILIES = ("lora_factors",)


def canonical_name(name: str) -> str:
    """``…q_proj.lora_A.default.weight`` (a live PEFT parameter) -> ``…q_proj.lora_A.weight`` (as saved)."""
    return _ADAPTER_NAME.sub(r".\1.weight", name)


def adapter_tensors(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise DirectionError(f"no adapter_model.safetensors in {adapter_dir}")
    return load_file(str(path))


def adapter_base_model(adapter_dir: str | Path) -> str | None:
    cfg = Path(adapter_dir) / "adapter_config.json"
    return json.loads(cfg.read_text()).get("base_model_name_or_path") if cfg.is_file() else None


def lora_factor_directions(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """The seed's directions: each LoRA factor of the adapter, normalized (zero tensors are skipped)."""
    directions = {}
    for name, tensor in adapter_tensors(adapter_dir).items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        tensor = tensor.float()
        norm = tensor.norm()
        if norm > 0:
            directions[canonical_name(name)] = (tensor / norm).contiguous()
    if not directions:
        raise DirectionError(f"{adapter_dir}: the adapter has no non-zero LoRA tensors")
    return directions


def compute_directions(kind: str, adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    if kind == "lora_factors":
        return lora_factor_directions(adapter_dir)
    raise DirectionError(f"unknown direction family '{kind}' (known: {', '.join(FAMILIES)})")


def save_directions(path: str | Path, directions: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in directions.items()}, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def load_directions(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors direction file, or a legacy seed ``.pt`` dict (never unpickling arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise DirectionError(f"direction file not found: {path}")
    try:
        if path.suffix in {".pt", ".pth", ".bin"}:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise DirectionError(f"{path}: expected a dict of tensors")
            return {canonical_name(k): v.float() for k, v in obj.items()}, {"family": "lora_factors", "legacy": "pt"}
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        return load_file(str(path)), metadata
    except DirectionError:
        raise
    except Exception as exc:  # corrupt or truncated files surface here
        raise DirectionError(f"{path}: cannot read direction file ({type(exc).__name__}: {exc})") from None
