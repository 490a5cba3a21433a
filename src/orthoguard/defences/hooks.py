"""The training hooks of the literature defences (``training.TrainingHook``).

Apart from their modes because they import the Trainer (``orthoguard.training``, seconds to import), while the
modes are imported whenever a config is validated; the modes import this module in ``hooks()``, as ``modes.py``
does for its own hooks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformers import TrainerCallback

from orthoguard.defences import asft, safelora
from orthoguard.defences.alignment import Alignment, pair_modules
from orthoguard.training import PenaltyHook, TrainingHook


class _ProjectAtTrainEnd(TrainerCallback):
    """Runs SafeLoRA's projection once, when training ends (``train_lora`` saves the adapter after ``train()``
    returns, so the saved adapter is the projected one; the probe of the last step saw the same projection through
    ``SafeLoRAHook.probed_as``)."""

    def __init__(self, hook: SafeLoRAHook) -> None:
        self.hook = hook

    def on_train_end(self, args, state, control, **kwargs):
        self.hook.finish()


class SafeLoRAHook(TrainingHook):
    """SafeLoRA: the attack trains unchanged; at the end B <- C B in the modules it selects (``safelora.project_``)."""

    def __init__(self, alignment: dict[str, Alignment], threshold: float | None, layers: int | None,
                 source: str = "refusal dW_ref") -> None:
        self.alignment, self.threshold, self.layers, self.source = alignment, threshold, layers, source
        self.pairs: dict[str, dict] = {}
        self.record: dict[str, Any] | None = None

    def callbacks(self, peft_model, loss_log):
        self.pairs = pair_modules(dict(peft_model.named_parameters()), self.alignment)  # mismatches fail before training
        self.record = None
        return [_ProjectAtTrainEnd(self)]

    def log_fields(self):
        return {"defence": {**self.record, "v": self.source}} if self.record is not None else {}

    def finish(self):
        if self.record is None:
            self.record = safelora.project_(self.pairs, self.threshold, self.layers)

    @contextlib.contextmanager
    def probed_as(self):
        """SafeLoRA is what is deployed: a probe at any step sees the attack as projected then (selected by the
        similarities of that step), and training resumes from the unprojected B."""
        if self.record is not None:  # the projection was applied for good (training has ended)
            yield
            return
        saved = {m: p["B"].detach().clone() for m, p in self.pairs.items()}
        try:
            safelora.project_(self.pairs, self.threshold, self.layers)
            yield
        finally:
            with torch.no_grad():
                for m, B in saved.items():
                    self.pairs[m]["B"].copy_(B)


class AsFTHook(PenaltyHook):
    """AsFT: lambda * sum ||(I - C) dW||_F^2 added to every loss (the ``RegularizedTrainer`` of regularized mode,
    which logs it per step as ``reg_penalty``)."""

    def __init__(self, alignment: dict[str, Alignment], strength: float, scale: float, source: str = "refusal dW_ref") -> None:
        self.alignment, self.strength, self.scale, self.source = alignment, float(strength), float(scale), source
        self.pairs: dict[str, dict] = {}

    def trainer_kwargs(self, peft_model, loss_log):
        self.pairs = pair_modules(dict(peft_model.named_parameters()), self.alignment)
        return {"penalty": asft.penalty_fn(self.pairs, self.strength, self.scale), "loss_log": loss_log}

    def log_fields(self):
        if not self.pairs:
            return {}
        return {"defence": {
            "name": "asft", "lambda": self.strength, "scale": self.scale, "v": self.source,
            "penalty": "lambda * sum ||(I - C) dW||_F^2, C = V V^T / ||V||_F, dW = (alpha/r) B A",
            "residual_ratio": asft.residual_ratios(self.pairs, self.scale),  # at the end of training
        }}
