"""Attack modes: what each adds to attack training, and its role in the report.

    vanilla      nothing: the undefended attack the defences are compared with
    orthogonal   a projection of every optimizer step away from the refusal directions (or a random control's)
    regularized  a penalty on movement along the blue - red directions, added to the loss
    safelora     SafeLoRA (Hsu et al. 2024), post hoc: B <- C B in the least similar modules  (defences/safelora.py)
    asft         AsFT (Yang et al. 2026): a penalty on the update off the alignment direction   (defences/asft.py)

A mode is an :class:`AttackMode` registered with :func:`register_mode`; the config accepts the registered names
(``attack.variants[].mode``), the pipeline asks the variant's mode for its training hooks, the direction files it
needs and the stages it reads from, and ``training.train_lora`` applies the hooks without knowing the mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orthoguard.errors import DataError
from orthoguard.metrics import mean_removed_share

if TYPE_CHECKING:
    from orthoguard.config import AttackVariant, ExperimentConfig
    from orthoguard.training import TrainingHook


class AttackMode:
    name: str = ""
    role: str = "defence"  # "undefended": the attack the defences are compared with; "defence": a defended attack
    blue_red: bool = False  # needs the blue and red LoRAs and their difference (the blue-red stages)
    has_controls: bool = False  # its variants can be random controls (random: same_rank | matched) of each other
    post_hoc: bool = False  # changes nothing in training: applied to a trained vanilla attack where one trains alike (defences/posthoc.py)
    fields: tuple[str, ...] = ()  # variant settings (default None) that only this mode reads; others must leave them unset

    def check(self, variant: AttackVariant) -> None:
        """Raise ``ValueError`` (one line, naming the variant) for settings this mode cannot train with."""
        if variant.random and not self.has_controls:
            raise ValueError(f"variant '{variant.name}': mode {self.name} has no random controls "
                             f"(modes with controls: {', '.join(m.name for m in MODES.values() if m.has_controls)})")

    def direction_keys(self, variant: AttackVariant, default_kind: str) -> set[str]:
        """The direction files (``directions/refusal.<key>.safetensors``) the directions stage makes for it."""
        return set()

    def upstream(self, cfg: ExperimentConfig, variant: AttackVariant) -> list[str]:
        """Stages, beyond those of every attack, whose outputs this variant's training reads."""
        return []

    def outputs(self, run: Any, variant: AttackVariant) -> list:
        """Files, beyond the adapter, the log and the diagnostics, that this variant's stage writes."""
        return []

    def hooks(self, run: Any, variant: AttackVariant, train_cfg) -> list[TrainingHook]:
        """What the mode adds to training (``training.TrainingHook``: callbacks, a Trainer class, log fields)."""
        return []

    def describe(self, variant: dict) -> str:
        """The variant's role in the report's words (``variant``: its config entry as the run recorded it)."""
        return f"attack, {self.name}"


MODES: dict[str, AttackMode] = {}


def register_mode(mode: AttackMode) -> AttackMode:
    MODES[mode.name] = mode
    return mode


def mode_names() -> list[str]:
    return list(MODES)


def get_mode(name: str) -> AttackMode:
    if name not in MODES:
        raise DataError(f"unknown attack mode '{name}' (known: {', '.join(MODES)})")
    return MODES[name]


def check_variant(variant: AttackVariant) -> None:
    """The variant's mode checks its settings; a setting only another mode reads (``AttackMode.fields``) is an error."""
    mode = get_mode(variant.mode)
    mode.check(variant)
    for other in MODES.values():
        stray = [f for f in other.fields if f not in mode.fields and getattr(variant, f, None) is not None]
        if other is not mode and stray:
            raise ValueError(f"variant '{variant.name}': {', '.join(stray)} is a setting of mode {other.name}, not {mode.name}")


class Vanilla(AttackMode):
    name, role = "vanilla", "undefended"

    def describe(self, variant):
        return "attack, no defense"


class Orthogonal(AttackMode):
    name, has_controls = "orthogonal", True

    def direction_keys(self, variant, default_kind):
        return set() if variant.random == "matched" else {variant.directions_key(default_kind)}

    def upstream(self, cfg, variant):
        # a matched control is sized from its defence's training log
        return [f"attack:{defence_of(cfg, variant).name}"] if variant.random == "matched" else []

    def outputs(self, run, variant):
        return [run.directions_path(variant.directions_key(run.cfg.directions.kind))] if variant.random == "matched" else []

    def describe(self, variant):
        from orthoguard.report.constants import CONTROL_ROLES

        kind = f"{variant['directions']} directions, projected at the {variant['at']}"
        if variant["random"]:
            return f"random control, {CONTROL_ROLES.get(variant['random'], variant['random'])} ({kind})"
        return f"attack, orthogonal ({kind})"

    def hooks(self, run, variant, train_cfg):
        from orthoguard.directions import load_directions
        from orthoguard.training import ProjectionHook, ProjectionSpec

        if variant.random == "matched":
            return [ProjectionHook(ProjectionSpec(matched_control_directions(run, variant), "matched", variant.at))]
        kind = run.cfg.directions.kind
        directions, meta = load_directions(run.directions_path(variant.directions_key(kind)))
        return [ProjectionHook(ProjectionSpec(directions, meta.get("family", variant.family(kind)), variant.at))]


class Regularized(AttackMode):
    name, blue_red = "regularized", True

    def check(self, variant):
        from orthoguard.families import family_names

        supported = family_names(regularizable=True)
        if variant.random or variant.directions not in (None, *supported):
            raise ValueError(f"variant '{variant.name}': regularized mode takes directions {' or '.join(supported)}, not random")

    def upstream(self, cfg, variant):
        return ["blue-red"]

    def describe(self, variant):
        return f"attack, regularized ({variant['directions']}, lambda {variant.get('reg_lambda', '?')})"

    def hooks(self, run, variant, train_cfg):
        from orthoguard.directions import load_directions
        from orthoguard.regularization import RegularizerSpec
        from orthoguard.training import PenaltyHook

        family = variant.family(run.cfg.directions.kind)
        directions, _ = load_directions(run.directions_path(f"blue-red.{family}"))
        return [PenaltyHook(RegularizerSpec(directions, family, variant.reg_lambda, train_cfg.lora.alpha / train_cfg.lora.r))]


for _mode in (Vanilla(), Orthogonal(), Regularized()):
    register_mode(_mode)


# --------------------------------------------------------------------------------------------------------
# The matched random control (orthogonal mode, random: matched)


def defence_of(cfg: ExperimentConfig, control: AttackVariant) -> AttackVariant:
    defence = cfg.attack.defence_of(control, cfg.directions.kind)
    if defence is None:  # the config validator makes this unreachable for matched controls
        raise DataError(f"variant '{control.name}': no defence to control")
    return defence


def matched_control_directions(run: Any, control: AttackVariant) -> dict:
    """Random subspaces sized from what the defence's projection removed in its own training (its log), saved as
    ``directions/refusal.matched-<control>.safetensors``."""
    from orthoguard import distributed
    from orthoguard.directions import save_directions
    from orthoguard.families.matched import matched_random_subspaces
    from orthoguard.rundir import TrainLog
    from orthoguard.seeding import derive_seed

    defence = defence_of(run.cfg, control)
    log = TrainLog.read(run.log_path(defence.name)).model_dump(mode="json")
    measured = (log.get("projection") or {}).get("tensors")
    if not measured:
        raise DataError(f"{run.log_path(defence.name)}: no per-tensor projection shares to size the matched control "
                        f"'{control.name}' from (rerun the '{defence.name}' attack)")
    directions = matched_random_subspaces(measured, seed=derive_seed(run.cfg.seed, f"matched:{control.name}"),
                                          target_share=mean_removed_share(log, defence.at))
    if distributed.is_main():
        save_directions(run.directions_path(control.directions_key(run.cfg.directions.kind)), directions,
                        {"family": "matched", "controls": defence.name, "base_model": run.cfg.model.name})
    return directions


# The defences from the literature, one module each under defences/, register themselves (after the registry exists).
from orthoguard.defences import safelora  # noqa: E402,F401
from orthoguard.defences import asft  # noqa: E402,F401
