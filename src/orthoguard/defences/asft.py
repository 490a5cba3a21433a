"""``asft``: AsFT, Anchoring Safety in Fine-Tuning (Yang et al., "AsFT: Anchoring Safety During LLM Fine-Tuning
Within Narrow Safety Basin", AAAI 2026, arXiv:2506.08473; code github.com/PKU-YuanGroup/AsFT).

A penalty on the part of the attack's update that leaves the alignment direction, added to every loss:

    L = L_SFT + lambda * sum_modules || (I - C) dW ||_F^2,     dW = (alpha/r) B A,   C = V V^T / ||V||_F

with C built as SafeLoRA builds it (their ``AsFT_finetuning.py`` reuses SafeLoRA's ``get_aligned_matrix``;
``defences/alignment.py``) and V = dW_ref. ``lambda`` is the variant's ``reg_lambda`` (their scripts use 1).

Two deliberate choices, written here because they change what lambda means:

- dW includes the LoRA scale alpha/r (the weight change the attack actually makes, as everywhere in orthoguard).
  Their training loop penalises B A without the scale, so their lambda is ours times (alpha/r)^2.
- No 1/2 in front (theirs has none; regularized mode's penalty has one).

Computed without forming d_out x d_in (or d_out x d_out) matrices: with X = (I - C) B = B - C B (d_out x r),
||(I - C) s B A||_F^2 = s^2 tr(X^T X A A^T), differentiable in A and B.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from orthoguard.defences.alignment import (Alignment, check_control_settings, check_variant_settings, trace_inner,
                                           variant_alignment)
from orthoguard.modes import AttackMode, register_mode


def off_basin_energy(A: torch.Tensor, B: torch.Tensor, V: Alignment, scale: float = 1.0) -> torch.Tensor:
    """||(I - C) (scale B A)||_F^2 of one module (differentiable in A and B; computed in their dtype)."""
    X = B - V.apply(B)
    return scale**2 * trace_inner(X, X, A @ A.T)


def penalty_fn(pairs: dict[str, dict], strength: float, scale: float) -> Callable[[], torch.Tensor]:
    """A closure returning lambda * sum_modules ||(I - C) dW||_F^2 for the current parameters (differentiable)."""

    def penalty() -> torch.Tensor:
        total = 0.0
        device = next(iter(pairs.values()))["B"].device.type if pairs else "cpu"  # where the Trainer put the model
        with torch.autocast(device_type=device, enabled=False):  # fp32, also inside the Trainer's bf16 autocast
            for p in pairs.values():
                if p["V"].L.device != p["B"].device:  # once, after the Trainer moved the model
                    p["V"] = p["V"].to(p["B"].device)
                total = total + off_basin_energy(p["A"].float(), p["B"].float(), p["V"], scale)
        return strength * total

    return penalty


@torch.no_grad()
def residual_ratios(pairs: dict[str, dict], scale: float) -> dict[str, float]:
    """Per module ||(I - C) dW||^2 / ||dW||^2, what the penalty charges per unit of update energy (0 for dW = 0).
    C is not a projector, so this is not a share: it lies between the smallest and the largest eigenvalue of
    (I - C)^2, which are 1 (off V's column space) and (1 - c_i)^2 for the eigenvalues c_i = sigma_i^2 / ||V||_F of C."""
    out = {}
    for m, p in pairs.items():
        A, B = p["A"].detach().float(), p["B"].detach().float()
        total = float(scale**2 * trace_inner(B, B, A @ A.T))
        out[m] = float(off_basin_energy(A, B, p["V"], scale)) / total if total > 0 else 0.0
    return out


class AsFT(AttackMode):
    name, has_controls = "asft", True

    def check(self, variant):
        super().check(variant)
        check_variant_settings(variant, self.name)

    def describe(self, variant):
        from orthoguard.report.constants import CONTROL_ROLES

        lam = variant.get("reg_lambda", "?")
        if variant.get("random"):
            return f"random control, {CONTROL_ROLES.get(variant['random'], variant['random'])} (AsFT, lambda {lam})"
        return f"attack, AsFT (penalty off the alignment direction, lambda {lam})"

    def hooks(self, run, variant, train_cfg) -> list[Any]:
        from orthoguard.defences.hooks import AsFTHook

        check_control_settings(run.cfg, variant, ("reg_lambda",))
        alignment, source = variant_alignment(run, variant, self.name)
        return [AsFTHook(alignment, variant.reg_lambda, train_cfg.lora.alpha / train_cfg.lora.r, source)]


register_mode(AsFT())
