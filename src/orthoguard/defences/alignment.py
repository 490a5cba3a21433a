"""The alignment matrix both literature defences build from V = dW_ref, and what their modes share.

Per LoRA target module, V = W_aligned - W_base. Here the aligned model is the base model plus the refusal LoRA,
so V is exactly the refusal change, V = (alpha_ref / r_ref) B_ref A_ref, kept as V = L @ R with L = s_ref B_ref
(d_out x r_ref) and R = A_ref (r_ref x d_in). Both papers' code builds, per module,

    C = V V^T / ||V||_F          (SafeLoRA ``get_aligned_matrix``: ``torch.mm(vec, vec.t()) / torch.norm(vec)``;
                                  AsFT reuses that function, ``AsFT_finetuning.py``)

divided by the Frobenius norm, not its square: C is symmetric positive semi-definite with the column space of V,
but it is not a projector (C^2 != C; its eigenvalues are sigma_i^2 / ||V||_F for the singular values sigma_i of
V). We keep that definition. C is never formed (d_out x d_out): C X = L (R R^T) (L^T X) / ||V||_F.

The random same-rank control keeps each module's singular values and draws its singular vectors at random
(uniformly on the Stiefel manifolds, through QR of Gaussian matrices): a V of the same rank, norm and spectrum, so
its C scales an update exactly as much as the real one, in directions unrelated to refusal.

Nothing here imports the Trainer (``orthoguard.training``): the modes are imported when a config is validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orthoguard.directions import lowrank_norm, module_factors
from orthoguard.errors import DataError, DirectionError
from orthoguard.projection import _check_match, _check_shape, lora_modules


@dataclass(frozen=True)
class Alignment:
    """V = L @ R of one module and ||V||_F."""

    L: torch.Tensor  # d_out x k
    R: torch.Tensor  # k x d_in
    norm: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.L.shape[0], self.R.shape[1]

    def to(self, device) -> Alignment:
        return Alignment(self.L.to(device), self.R.to(device), self.norm)

    def dense_v(self) -> torch.Tensor:  # for tests and small checks only
        return self.L @ self.R

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """C X = V V^T X / ||V||_F = L (R R^T) (L^T X) / ||V||_F for X of shape d_out x m (differentiable in X)."""
        L, R = self.L.to(X), self.R.to(X)
        return L @ ((R @ R.T) @ (L.T @ X)) / self.norm


def alignment_from_factors(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float) -> dict[str, Alignment]:
    """{module: Alignment} from the refusal adapter's {module: (A, B)} and its alpha / r."""
    out = {}
    for module, (A, B) in sorted(factors.items()):
        L, R = (scale * B.float()).contiguous(), A.float().contiguous()
        norm = float(lowrank_norm(L, R))
        if norm == 0:
            raise DirectionError(f"the refusal change dW_ref is zero in module {module}: the alignment matrix "
                                 "V V^T / ||V||_F is undefined there")
        out[module] = Alignment(L, R, norm)
    return out


def alignment_from_adapter(adapter_dir: str | Path) -> dict[str, Alignment]:
    """V = dW_ref = (alpha/r) B_ref A_ref per module of a saved (refusal) adapter."""
    from orthoguard.diagnostics import lora_scale

    return alignment_from_factors(module_factors(adapter_dir), lora_scale(adapter_dir))


def _haar_columns(rows: int, k: int, g: torch.Generator) -> torch.Tensor:
    Q, Rq = torch.linalg.qr(torch.randn(rows, k, generator=g))
    signs = torch.diagonal(Rq).sign()
    signs[signs == 0] = 1
    return Q * signs  # with the signs of R's diagonal fixed, Q is uniformly (Haar) distributed


def random_same_spectrum(alignment: dict[str, Alignment], seed: int) -> dict[str, Alignment]:
    """Per module (sorted) a random V' = U' diag(S) W'^T with V's singular values S and random orthonormal U'
    (d_out x k), W' (d_in x k): the same rank, norm and spectrum as V."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for module in sorted(alignment):
        a = alignment[module]
        QL, RL = torch.linalg.qr(a.L)
        QR, RR = torch.linalg.qr(a.R.T)
        S = torch.linalg.svdvals(RL @ RR.T)
        k = S.shape[0]
        U, W = _haar_columns(a.L.shape[0], k, g), _haar_columns(a.R.shape[1], k, g)
        L, R = (U * S).contiguous(), W.T.contiguous()
        out[module] = Alignment(L, R, float(lowrank_norm(L, R)))
    return out


def pair_modules(named_params: dict[str, torch.nn.Parameter], alignment: dict[str, Alignment]) -> dict[str, dict]:
    """{module: {"A": param, "B": param, "V": Alignment on the parameters' device}} for every trainable LoRA module;
    a module without V, a V without a module or a shape mismatch is an error (as for the families' constraints)."""
    modules = lora_modules(named_params)
    _check_match(set(alignment), set(modules), "modules", next(iter(sorted(modules)), "-"))
    out = {}
    for name in sorted(modules):
        A, B, V = modules[name]["A"], modules[name]["B"], alignment[name]
        _check_shape(f"{name} (V = dW_ref)", V.shape, (B.shape[0], A.shape[1]))
        out[name] = {"A": A, "B": B, "V": V.to(B.device)}
    return out


def trace_inner(X: torch.Tensor, Y: torch.Tensor, AAt: torch.Tensor) -> torch.Tensor:
    """<X A, Y A>_F = tr(X^T Y A A^T) for X, Y of shape d_out x r, without forming d_out x d_in products."""
    return ((X.T @ Y) * AAt).sum()


# --------------------------------------------------------------------------------------------------------
# What the two modes share: the alignment a variant uses (the refusal change, or its random control)


def variant_alignment(run: Any, variant: Any, mode: str) -> tuple[dict[str, Alignment], str]:
    """The alignment matrices of a variant: V = dW_ref of the run's refusal adapter, or for ``random: same_rank``
    a random V of the same rank and spectrum (stream ``random-alignment:<mode>`` of the run's seed)."""
    from orthoguard.seeding import derive_seed

    alignment = alignment_from_adapter(run.adapter("refusal"))
    if not variant.random:
        return alignment, "refusal dW_ref"
    seed = derive_seed(run.cfg.seed, f"random-alignment:{mode}")
    return random_same_spectrum(alignment, seed), f"random, same rank and spectrum as dW_ref (seed {seed})"


def check_control_settings(cfg: Any, variant: Any, fields: tuple[str, ...]) -> None:
    """A random control must use its defence's settings (else it controls something else)."""
    defence = cfg.attack.defence_of(variant, cfg.directions.kind)
    if defence is None:  # not a control, or a random variant without a defence to control
        return
    differ = [f for f in fields if getattr(variant, f) != getattr(defence, f)]
    if differ:
        raise DataError(f"variant '{variant.name}': a random control of '{defence.name}' needs its settings, but "
                        + ", ".join(f"{f} is {getattr(defence, f)!r} there and {getattr(variant, f)!r} here" for f in differ))


def check_variant_settings(variant, mode: str) -> None:
    """The literature defences build their own matrices from dW_ref and have one placement; their random control
    is same_rank only (a matched control is sized from an orthogonal projection's log)."""
    if variant.random == "matched":
        raise ValueError(f"variant '{variant.name}': mode {mode} has random: same_rank controls, not matched")
    if variant.directions is not None:
        raise ValueError(f"variant '{variant.name}': mode {mode} builds its matrices from dW_ref, so it takes no directions")
    if variant.at != "update":
        raise ValueError(f"variant '{variant.name}': mode {mode} has no placement ('at' is for orthogonal mode)")
