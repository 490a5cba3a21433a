"""Refusal directions, by family, saved as safetensors with metadata. dW_ref = (alpha/r) B_ref A_ref per module.

- ``lora_factors`` (the seed's): every LoRA tensor of the refusal adapter, divided by its norm.
- ``delta_w``: per module U = dW_ref / ||dW_ref||_F, kept as L @ R (never a dense d_out x d_in matrix).
- ``subspace``: per module the top-k left singular vectors U_k of dW_ref.
- ``activation``: the refusal direction r in the residual stream (difference of mean activations), for the
  modules that write into it (o_proj, down_proj).
- a random control of any family: same keys, shapes and ranks, random content (``random_like``);
- a matched random control: random subspaces sized so that they remove the share of the update energy that a
  defence removed (``matched_random_subspaces``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
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


FamilyBuilder = Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]], DirectionsConfig], dict[str, torch.Tensor]]
FAMILIES: dict[str, FamilyBuilder] = {}


def register_family(name: str) -> Callable[[FamilyBuilder], FamilyBuilder]:
    def register(fn: FamilyBuilder) -> FamilyBuilder:
        FAMILIES[name] = fn
        return fn

    return register


@register_family("lora_factors")
def lora_factor_directions(factors, settings=None) -> dict[str, torch.Tensor]:
    """The seed's directions: each LoRA factor of the adapter, normalized (zero tensors are skipped)."""
    directions = {}
    for module, (A, B) in factors.items():
        for which, tensor in (("A", A), ("B", B)):
            if tensor.norm() > 0:
                directions[f"{module}.lora_{which}.weight"] = (tensor / tensor.norm()).contiguous()
    return directions


@register_family("delta_w")
def delta_w_directions(factors, settings=None) -> dict[str, torch.Tensor]:
    """Per module U = dW_ref / ||dW_ref||_F = L @ R with L = B / ||B A||_F and R = A (the LoRA scale cancels)."""
    out = {}
    for module, (A, B) in factors.items():
        norm = lowrank_norm(B, A)
        if norm > 0:
            out[f"{module}.L"], out[f"{module}.R"] = (B / norm).contiguous(), A.contiguous()
    return out


@register_family("subspace")
def subspace_directions(factors, settings: DirectionsConfig) -> dict[str, torch.Tensor]:
    """Per module the top-k left singular vectors of dW_ref (k fixed, or the smallest k reaching the energy)."""
    out = {}
    for module, (A, B) in factors.items():
        U, S = left_singular(A, B)
        if S.numel() and S[0] > 0:
            out[f"{module}.U"] = U[:, : choose_k(S, settings.subspace_k, settings.subspace_energy)].contiguous()
    return out


def activation_directions(direction: torch.Tensor, module_shapes: dict[str, int]) -> dict[str, torch.Tensor]:
    """The residual-stream refusal direction r, as a one-column subspace for every module writing into the stream."""
    r = (direction.float() / direction.float().norm()).reshape(-1, 1)
    writers = {m: d for m, d in module_shapes.items() if m.endswith(("o_proj", "down_proj"))}
    bad = sorted(m for m, d in writers.items() if d != r.shape[0])
    if bad:
        raise DirectionError(f"module {bad[0]} writes {writers[bad[0]]} features, the direction has {r.shape[0]}")
    return {f"{m}.U": r.clone() for m in writers}


def random_like(directions: dict[str, torch.Tensor], family: str, seed: int) -> dict[str, torch.Tensor]:
    """A control: random directions with the same keys, shapes and ranks as ``directions`` of ``family``."""
    g = torch.Generator().manual_seed(seed)

    def gaussian(shape):
        return torch.randn(*shape, generator=g)

    out = {}
    if family == "activation":  # one shared random direction, like the one shared refusal direction
        first = next(iter(directions.values()))
        r = gaussian(first.shape)
        r /= r.norm()
        return {k: r.clone() for k in directions}
    for key in sorted(directions):
        t = directions[key]
        if family == "lora_factors":
            x = gaussian(t.shape)
            out[key] = x / x.norm()
        elif family == "subspace":
            out[key] = torch.linalg.qr(gaussian(t.shape))[0]
        elif family == "delta_w" and key.endswith(".L"):
            module = key[: -len(".L")]
            L, R = gaussian(t.shape), gaussian(directions[f"{module}.R"].shape)
            out[key], out[f"{module}.R"] = L / lowrank_norm(L, R), R
        elif family != "delta_w":
            raise DirectionError(f"no random control for family '{family}'")
    return out


def matched_random_subspaces(tensors: dict[str, dict], seed: int, target_share: float | None = None) -> dict[str, torch.Tensor]:
    """A random control sized to remove what a defence removed.

    ``tensors`` maps each LoRA tensor the defence constrained to ``{"shape": [rows, cols], "removed_energy_share":
    e, "energy": E}`` as its training log records them (e: the share of the tensor's update energy the projection
    removed over training; E: that energy). Each tensor gets a uniformly random subspace of dimension k of its
    longer side (d = rows for B, d_out x r; d = cols for A, r x d_in), removed from its change. A uniformly random
    k-dimensional subspace of R^d holds in expectation k/d of any update's energy, so k ~ c * e * d removes in
    expectation the defence's share of each tensor's energy, in directions unrelated to the refusal change.

    ``target_share`` (the defence's mean per-step share of the update *norm*, s) sets the one factor c = s^2 / R,
    R = sum(e * E) / sum(E), so that the expected per-step norm share equals the defence's. k must be an integer,
    and one dimension of a wide tensor can be more than a tensor's whole share: the ks are the floors of c * e * d,
    plus one for the tensors with the largest remainders until the energy-weighted total sum(k / d * E) / sum(E)
    reaches its target. Every tensor the defence constrained is listed, with k = 0 where it gets nothing, so the
    control's share is measured over the same tensors as the defence's.
    """
    names = sorted(tensors)
    energy = {n: float(tensors[n].get("energy", 1.0)) for n in names}
    total = sum(energy.values()) or 1.0
    weight = {n: energy[n] / total for n in names}
    share = {n: float(tensors[n]["removed_energy_share"]) for n in names}
    removed = sum(share[n] * weight[n] for n in names)
    goal = target_share**2 if target_share is not None else removed
    scale = goal / removed if removed > 0 else 0.0
    sides = {n: ("left", tensors[n]["shape"][0]) if tensors[n]["shape"][0] >= tensors[n]["shape"][1]
             else ("right", tensors[n]["shape"][1]) for n in names}
    wanted = {n: min(scale * share[n] * sides[n][1], sides[n][1] - 1) for n in names}
    k = {n: int(wanted[n]) for n in names}
    reached = sum(k[n] / sides[n][1] * weight[n] for n in names)
    for n in sorted(names, key=lambda n: wanted[n] - k[n], reverse=True):
        step = weight[n] / sides[n][1]
        if goal - reached > step / 2 and k[n] < sides[n][1] - 1 and wanted[n] > k[n]:
            k[n] += 1
            reached += step
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        side, d = sides[n]
        out[f"{n}.{side}"] = torch.linalg.qr(torch.randn(d, k[n], generator=g))[0].contiguous() if k[n] else torch.zeros(d, 0)
    return out


def compute_directions(kind: str, adapter_dir: str | Path, settings: DirectionsConfig | None = None) -> dict[str, torch.Tensor]:
    """Directions of a weight-space family from the refusal adapter (``activation`` needs a model: see pipeline)."""
    if kind not in FAMILIES:
        raise DirectionError(f"unknown direction family '{kind}' (known: {', '.join(sorted(FAMILIES))})")
    directions = FAMILIES[kind](module_factors(adapter_dir), settings or DirectionsConfig())
    if not directions:
        raise DirectionError(f"{adapter_dir}: the adapter has no non-zero LoRA tensors")
    return directions


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
