"""Refusal directions: the shared I/O and linear algebra of every family, and the dispatch to the family.

Each family lives in ``orthoguard/families/<family>.py`` (builder, same-rank random control, constraint, blue - red
and penalty where it has them). dW_ref = (alpha/r) B_ref A_ref per module.

- ``lora_factors`` (the seed's): every LoRA tensor of the refusal adapter, divided by its norm.
- ``delta_w``: per module U = dW_ref / ||dW_ref||_F, kept as L @ R (never a dense d_out x d_in matrix).
- ``subspace``: per module the top-k left singular vectors U_k of dW_ref.
- ``activation``: the refusal direction r in the residual stream (difference of mean activations), for the
  modules that write into it (o_proj, down_proj).
- a random control of any family: same keys, shapes and ranks, random content (``random_like``);
- a matched random control: random subspaces sized so that they remove the share of the update energy that a
  defence removed (``families/matched.py``, ``matched_random_subspaces``).

Direction files are safetensors with metadata (``save_directions`` / ``load_directions``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from orthoguard.config import DirectionsConfig
from orthoguard.errors import DirectionError
from orthoguard.io import atomic_path

_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")


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


def module_factors(adapter_dir: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (A, B)} of a saved LoRA adapter, in fp32 (A: r x d_in, B: d_out x r)."""
    tensors = adapter_tensors(adapter_dir)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = re.search(r"\.lora_([AB])\.weight$", canonical_name(name))
        if match:
            modules.setdefault(canonical_name(name)[: match.start()], {})[match.group(1)] = tensor.float()
    incomplete = sorted(m for m, f in modules.items() if set(f) != {"A", "B"})
    if incomplete:
        raise DirectionError(f"{adapter_dir}: module {incomplete[0]} lacks lora_A or lora_B")
    if not modules:
        raise DirectionError(f"{adapter_dir}: the adapter has no LoRA tensors")
    return {m: (f["A"], f["B"]) for m, f in modules.items()}


def lowrank_norm(L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """||L @ R||_F without forming the d_out x d_in product."""
    return torch.sqrt(torch.clamp(torch.trace((L.T @ L) @ (R @ R.T)), min=0))


def left_singular(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values of B @ A, through a QR of B (cheap: rank r)."""
    Q, Rb = torch.linalg.qr(B)
    U_small, S, _ = torch.linalg.svd(Rb @ A, full_matrices=False)
    return Q @ U_small, S


def choose_k(S: torch.Tensor, k: int | None, energy: float) -> int:
    if k is not None:
        return max(1, min(k, int((S > 0).sum())))
    cumulative = torch.cumsum(S**2, 0) / torch.clamp((S**2).sum(), min=1e-30)
    return int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-9)).item()) + 1


def compute_directions(kind: str, adapter_dir: str | Path, settings: DirectionsConfig | None = None) -> dict[str, torch.Tensor]:
    """Directions of a weight-space family from the refusal adapter (``activation`` needs a model: see pipeline)."""
    from orthoguard.families import FAMILIES, family_names  # the families build on this module

    weight_space = family_names(needs_model=False)
    if kind not in weight_space:
        raise DirectionError(f"unknown direction family '{kind}' (known: {', '.join(sorted(weight_space))})")
    directions = FAMILIES[kind].build(module_factors(adapter_dir), settings or DirectionsConfig())
    if not directions:
        raise DirectionError(f"{adapter_dir}: the adapter has no non-zero LoRA tensors")
    return directions


def random_like(directions: dict[str, torch.Tensor], family: str, seed: int) -> dict[str, torch.Tensor]:
    """A control: random directions with the same keys, shapes and ranks as ``directions`` of ``family``."""
    from orthoguard.families import FAMILIES

    if family not in FAMILIES:
        raise DirectionError(f"no random control for family '{family}'")
    return FAMILIES[family].random_same_rank(directions, seed)


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


# What the families own stays importable from here (resolved on first use: the families import this module).
_MOVED = {
    "lora_factor_directions": "orthoguard.families.lora_factors",
    "delta_w_directions": "orthoguard.families.delta_w",
    "subspace_directions": "orthoguard.families.subspace",
    "activation_directions": "orthoguard.families.activation",
    "refusal_activation_direction": "orthoguard.families.activation",
    "matched_random_subspaces": "orthoguard.families.matched",
    **{name: "orthoguard.families" for name in ("FAMILIES", "Family", "register_family", "unregister_family",
                                                 "get_family", "family_names")},
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
