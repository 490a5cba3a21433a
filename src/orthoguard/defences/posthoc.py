"""Post-hoc defences applied to an attack that was already trained, instead of a training of their own.

SafeLoRA (Hsu et al. 2024) changes nothing in training: it projects the fine-tuned adapter afterwards. A variant of
such a mode (``AttackMode.post_hoc``) whose training would repeat a vanilla variant's exactly (the same training
settings and the same mixture, hence the same data, LoRA initialisation and seed: ``source_of``) is applied to
that vanilla variant's LoRA snapshots (``training.LoraSnapshots``, saved at its refusal-probe steps) instead of
training again: each snapshot, with the defence's view applied (``TrainingHook.probed_as``), answers the refusal
probe of its step, and the last one, finished (``TrainingHook.finish``: SafeLoRA's projection), is the variant's
adapter. That is what its own training would have given (``tests/test_safelora.py`` checks tensor for tensor and
probe for probe), it is paired with the vanilla attack by construction, and it saves one training per variant (6
of the 39 in ``configs/cpu-study.yaml``). Without such a vanilla variant the defence trains as any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_file

if TYPE_CHECKING:
    from orthoguard.config import AttackVariant, ExperimentConfig


def source_of(cfg: ExperimentConfig, variant: AttackVariant) -> AttackVariant | None:
    """The vanilla variant a post-hoc defence's variant is applied to, or None (it trains itself)."""
    from orthoguard.modes import get_mode

    if not get_mode(variant.mode).post_hoc:
        return None
    a = cfg.attack
    same = (a.training_for(variant), a.mixture_of(variant))
    return next((v for v in a.variants if get_mode(v.mode).role == "undefended" and not v.random
                 and (a.training_for(v), a.mixture_of(v)) == same), None)


def applied_to(cfg: ExperimentConfig, variant: AttackVariant) -> list[AttackVariant]:
    """The post-hoc variants applied to ``variant`` (which then saves its LoRA snapshots)."""
    return [v for v in cfg.attack.variants if v is not variant and (s := source_of(cfg, v)) is not None
            and s.name == variant.name]


def apply(peft_model, hooks, snapshots: list[tuple[int, Path]], probe=None) -> None:
    """The defence of ``hooks`` on the trained attack whose snapshots ((step, file), in step order, the last one the
    trained adapter) are given: ``peft_model`` (a fresh LoRA of the same settings) ends holding the finished
    adapter, and ``probe`` (a ``training.RefusalProbe``) has a record for every snapshot's step."""
    if not snapshots:
        raise ValueError("no LoRA snapshots of the trained attack to apply the defence to")
    from orthoguard.training import load_lora_state

    for hook in hooks:
        hook.callbacks(peft_model, None)  # binds the hook to the model's LoRA modules (a mismatch fails here)
    if probe is not None:
        probe.views = [hook.probed_as for hook in hooks]
    for step, file in snapshots:
        load_lora_state(peft_model, load_file(str(file)))
        if probe is not None:
            probe.probe_start(peft_model) if step == 0 else probe.probe(peft_model, step)
    for hook in hooks:
        hook.finish()
