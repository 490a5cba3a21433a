"""Where an attack's weight change went, relative to the refusal change, computed from two saved adapters.

Per module, with dW = (alpha/r) B A for both adapters (all in low-rank form, never d_out x d_in):

- cosine   = <dW_attack, dW_ref>_F / (||dW_attack|| ||dW_ref||)
- energy   = ||U_k^T dW_attack||^2 / ||dW_attack||^2, the share of the attack's change inside the top-k left
             singular subspace of dW_ref (what the ``subspace`` family protects)

and the same over all modules together ("overall").
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from orthoguard.directions import choose_k, left_singular, module_factors


def lora_scale(adapter_dir: str | Path) -> float:
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return float(cfg["lora_alpha"]) / float(cfg["r"])


def _trace_product(X: torch.Tensor, Y: torch.Tensor) -> float:
    return float(torch.trace(X @ Y))


def weight_diagnostics(attack_dir: str | Path, ref_dir: str | Path, k: int | None = None, energy: float = 0.9) -> dict:
    attack, ref = module_factors(attack_dir), module_factors(ref_dir)
    s_att, s_ref = lora_scale(attack_dir), lora_scale(ref_dir)
    modules, totals = {}, {"inner": 0.0, "att": 0.0, "ref": 0.0, "inside": 0.0}
    for name in sorted(set(attack) & set(ref)):
        (A, B), (Ar, Br) = attack[name], ref[name]
        att_sq = s_att**2 * _trace_product(B.T @ B, A @ A.T)
        ref_sq = s_ref**2 * _trace_product(Br.T @ Br, Ar @ Ar.T)
        inner = s_att * s_ref * _trace_product(B.T @ Br, Ar @ A.T)
        U, S = left_singular(Ar, Br)
        Uk = U[:, : choose_k(S, k, energy)] if S.numel() and S[0] > 0 else U[:, :0]
        P = Uk.T @ B
        inside = s_att**2 * _trace_product(P.T @ P, A @ A.T)
        modules[name] = {
            "cosine": inner / (att_sq * ref_sq) ** 0.5 if att_sq > 0 and ref_sq > 0 else 0.0,
            "energy_in_ref_subspace": inside / att_sq if att_sq > 0 else 0.0,
            "k": Uk.shape[1],
            "attack_norm": att_sq**0.5,
        }
        for key, value in (("inner", inner), ("att", att_sq), ("ref", ref_sq), ("inside", inside)):
            totals[key] += value
    overall = {
        "cosine": totals["inner"] / (totals["att"] * totals["ref"]) ** 0.5 if totals["att"] and totals["ref"] else 0.0,
        "energy_in_ref_subspace": totals["inside"] / totals["att"] if totals["att"] else 0.0,
        "attack_norm": totals["att"] ** 0.5,
        "modules": len(modules),
    }
    return {"overall": overall, "modules": modules}
