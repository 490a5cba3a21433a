"""``safelora``: Safe LoRA (Hsu et al., "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning
Large Language Models", NeurIPS 2024, arXiv:2405.16833; code github.com/IBM/SafeLoRA, also ``peft.utils.safelora``).

Post hoc: the attack LoRA trains like vanilla; then, per LoRA module, with C = V V^T / ||V||_F
(``defences/alignment.py``, V = dW_ref),

    similarity  cos = <C dW, dW>_F / (||C dW||_F ||dW||_F)      (their ``cosine_similarity(fW.reshape(1,-1),
                                                                 ori.reshape(1,-1))`` with fW = C B A, ori = B A)
    projection  B <- C B, so dW' = (alpha/r) C B A = C dW       (their ``peft_weights[name_B] = W``, W = P B)

applied to the modules it selects (the LoRA scale cancels in the cosine):

- ``safelora_threshold: t``: every module with cos <= t (their ``select_layers_type="threshold"``);
- ``safelora_layers: N``: the N modules of lowest cos (their ``"number"``: they project every module at or
  below the N-th smallest cosine; ties, which they would all project, are broken here by module name so exactly
  N are projected). A "layer" in their code is one LoRA module (``idx`` counts LoRA B matrices), as here.

A module whose update is zero has cos = 0 (``cosine_similarity``'s eps). Every quantity is computed from r x r
products (never d_out x d_in): <X A, Y A>_F = tr(X^T Y A A^T).

The attack trains unprojected; its refusal probes see it as SafeLoRA would deploy it at their step (projected, with
the modules that step's similarities select: ``hooks.SafeLoRAHook.probed_as``), so its decay curve is the defence's
dose-response; the saved adapter, its diagnostics and the evaluation are the projected one. (Until 2026-12-02 the
probes saw the unprojected attack whenever the last step was a probe step, i.e. vanilla's curve.)
"""

from __future__ import annotations

from typing import Any

import torch

from orthoguard.defences.alignment import (Alignment, check_control_settings, check_variant_settings, trace_inner,
                                           variant_alignment)
from orthoguard.modes import AttackMode, register_mode


def similarity(A: torch.Tensor, B: torch.Tensor, V: Alignment) -> tuple[float, float]:
    """(cos(C B A, B A), ||C B A||_F / ||B A||_F) of one module; (0, 0) when B A = 0."""
    A32, B32 = A.detach().float(), B.detach().float()
    AAt, CB = A32 @ A32.T, V.apply(B32)
    inner = float(trace_inner(CB, B32, AAt))
    n_proj = float(trace_inner(CB, CB, AAt).clamp(min=0).sqrt())
    n_orig = float(trace_inner(B32, B32, AAt).clamp(min=0).sqrt())
    if n_orig == 0 or n_proj == 0:
        return 0.0, 0.0
    return inner / (n_proj * n_orig), n_proj / n_orig


def select_modules(similarities: dict[str, float], threshold: float | None = None, layers: int | None = None) -> list[str]:
    """The modules SafeLoRA projects: cos <= ``threshold``, or the ``layers`` lowest cosines (ties by name)."""
    if (threshold is None) == (layers is None):
        raise ValueError("SafeLoRA selects modules by a threshold or by a number of layers (one of the two)")
    if threshold is not None:
        return sorted(m for m, c in similarities.items() if c <= threshold)
    return sorted(sorted(similarities, key=lambda m: (similarities[m], m))[:layers])


@torch.no_grad()
def project_(pairs: dict[str, dict], threshold: float | None = None, layers: int | None = None) -> dict[str, Any]:
    """Apply SafeLoRA in place to the LoRA modules ``pairs`` ({module: {"A", "B", "V"}}, ``alignment.pair_modules``):
    B <- C B in the selected modules. Returns the record for the training log."""
    measured = {m: similarity(p["A"], p["B"], p["V"]) for m, p in pairs.items()}
    chosen = select_modules({m: cos for m, (cos, _) in measured.items()}, threshold, layers)
    for m in chosen:
        B = pairs[m]["B"]
        B.data.copy_(pairs[m]["V"].apply(B.detach().float()).to(B.dtype))
    return {
        "name": "safelora",
        "select": "threshold" if threshold is not None else "layers",
        "threshold": threshold, "layers": layers,
        "alignment_matrix": "C = V V^T / ||V||_F, V = dW_ref per module",
        "projected": chosen,
        "modules": {m: {"similarity": cos, "norm_ratio": ratio, "projected": m in chosen}
                    for m, (cos, ratio) in measured.items()},
    }


class SafeLoRA(AttackMode):
    name, has_controls, post_hoc = "safelora", True, True
    fields = ("safelora_threshold", "safelora_layers")

    def upstream(self, cfg, variant):
        from orthoguard.defences.posthoc import source_of

        source = source_of(cfg, variant)  # applied to that vanilla attack's snapshots instead of training again
        return [f"attack:{source.name}"] if source is not None else []

    def check(self, variant):
        super().check(variant)
        check_variant_settings(variant, self.name)
        if (variant.safelora_threshold is None) == (variant.safelora_layers is None):
            raise ValueError(f"variant '{variant.name}': mode safelora takes one of safelora_threshold (project "
                             "the modules whose cosine is at most it) or safelora_layers (the N least similar modules)")

    def describe(self, variant):
        from orthoguard.report.constants import CONTROL_ROLES

        t, n = variant.get("safelora_threshold"), variant.get("safelora_layers")
        which = f"modules with cosine <= {t}" if t is not None else f"the {n} least similar modules"
        if variant.get("random"):
            return f"random control, {CONTROL_ROLES.get(variant['random'], variant['random'])} (SafeLoRA, {which})"
        return f"attack, SafeLoRA (post hoc, {which})"

    def hooks(self, run, variant, train_cfg):
        from orthoguard.defences.hooks import SafeLoRAHook

        check_control_settings(run.cfg, variant, self.fields)
        alignment, source = variant_alignment(run, variant, self.name)
        return [SafeLoRAHook(alignment, variant.safelora_threshold, variant.safelora_layers, source)]


register_mode(SafeLoRA())
