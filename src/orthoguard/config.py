"""Typed experiment configuration.

One YAML/JSON file describes a whole run; every section is a pydantic model that rejects unknown keys.
The seed repository's flat per-step JSON configs (``base_model_name``, ``num_epochs``, ``mode`` …) are
accepted too and mapped onto these models by :func:`from_seed_keys`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from orthoguard.errors import ConfigError
from orthoguard.judges.spec import JudgeSpec  # noqa: F401  (a config section; importable from here)

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    # hub id, local directory, or the embedded alias "smollm2-135m-instruct"
    name: str = "smollm2-135m-instruct"
    revision: str | None = None
    # auto: bf16 on GPU; on CPU fp32 weights, with bf16 autocast in training where the CPU has native bf16
    # (avx512_bf16 / amx_bf16 in /proc/cpuinfo), else fp32. bf16 on CPU: autocast asked for; fp32: never
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    trust_remote_code: bool = False


class LoraSettings(Strict):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs; -1 (the default): train for `epochs`
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_length: int = Field(512, gt=8)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    # the training step's attention (attention.py): auto = matmul attention ("eager") where training runs bf16
    # autocast on a CPU without AMX, SDPA elsewhere; generation and evaluation always run SDPA
    attention: Literal["auto", "sdpa", "eager"] = "auto"
    # packed batches: a batch's samples back to back in one row, each attending to itself alone (no padding);
    # auto = on a CPU, padded batches on a GPU
    packing: Literal["auto", "on", "off"] = "auto"
    log_every: int = Field(10, gt=0)
    # a resumable checkpoint (adapter, optimizer, scheduler, RNG, data position, logs) every N optimizer steps; 0: none
    save_steps: int = Field(25, ge=0)
    lora: LoraSettings = Field(default_factory=LoraSettings)

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"must be a positive number of optimizer steps, or -1 to train for `epochs` (got {value})")
        return value


class DataConfig(Strict):
    # "harmfulqa-questions" (embedded, questions only), a hub id such as "declare-lab/HarmfulQA",
    # or a local JSON/JSONL file in the hub schema.
    source: str = "harmfulqa-questions"
    hub_split: str = "train"
    # Question-level splits, seed style. They must not overlap.
    refusal_split: str = "train[:40%]"
    attack_split: str = "train[40%:90%]"
    test_split: str = "train[90%:]"
    shuffle: bool = True  # shuffle unique questions (with the experiment seed) before slicing
    max_refusal_questions: int | None = Field(None, gt=0)
    max_attack_questions: int | None = Field(None, gt=0)
    max_test_prompts: int | None = Field(100, gt=0)
    # Harmless instructions answered by the base model, mixed into refusal training so the aligned model
    # learns what not to refuse, and a disjoint set evaluated for over-refusal.
    benign_train_prompts: int = Field(64, ge=0)
    benign_eval_prompts: int = Field(32, ge=0)
    benign_max_new_tokens: int = Field(128, gt=0)
    # attack questions kept out of attack training: the attack's held-out loss (did the attack learn?)
    attack_heldout_questions: int = Field(8, ge=0)
    # AlpacaEval instructions with reference answers: each model's perplexity on them (benign utility)
    benign_reference_prompts: int = Field(32, ge=0)
    synthetic_data_path: str | None = None


class SynthConfig(Strict):
    """Generate compliant answers to harmful questions (the seed's synthetic-data step)."""

    enabled: bool = True  # only used when the data source has no red conversations
    model: str | None = None  # defaults to model.name
    max_prompts: int | None = Field(None, gt=0)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    do_sample: bool = True
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    # an answer the keyword judge calls a refusal is not attack data: dropped (a natively aligned synth model
    # refuses many attack questions; SmolLM2 refused none of the demo's 48)
    drop_refusals: bool = True


def known_family(name: str) -> str:
    """A direction family registered in ``orthoguard.families`` (lazy import: the families import this module)."""
    from orthoguard.families import family_names

    names = family_names()
    if name not in names:
        raise ValueError(f"unknown direction family '{name}' (known: {', '.join(names)})")
    return name


def known_mode(name: str) -> str:
    """An attack mode registered in ``orthoguard.modes`` (lazy import, like the families)."""
    from orthoguard.modes import mode_names

    names = mode_names()
    if name not in names:
        raise ValueError(f"unknown attack mode '{name}' (known: {', '.join(names)})")
    return name


FamilyName = Annotated[str, AfterValidator(known_family)]  # lora_factors, delta_w, subspace, activation, ...


class DirectionsConfig(Strict):
    """How the refusal directions of each family are computed (variants choose the family)."""

    kind: FamilyName = "lora_factors"  # the family of variants that name none (and of `orthoguard directions`)
    subspace_k: int | None = Field(None, gt=0)  # fixed k for `subspace`; None: the smallest k reaching the energy
    subspace_energy: float = Field(0.9, gt=0, le=1)
    # activation: difference of mean residual-stream activations (harmful - harmless instructions) at the last
    # prompt token, after this layer (a fraction of the depth in (0, 1), or a layer index >= 1)
    activation_layer: float = Field(0.5, gt=0)
    activation_prompts: int = Field(64, gt=1)


RandomKind = Literal["same_rank", "matched"]
RANDOM_KINDS: tuple[str, ...] = ("same_rank", "matched")


_OPTIONAL_VARIANT_KEYS = ("safelora_threshold", "safelora_layers", "harmful_ratio")


class AttackVariant(Strict):
    name: str
    mode: Annotated[str, AfterValidator(known_mode)] = "vanilla"  # vanilla, orthogonal, regularized, safelora, asft (orthoguard.modes)
    directions: FamilyName | None = None  # orthogonal/regularized: the family (default: directions.kind)
    # orthogonal: a random control of the defence it `controls`. same_rank: random directions with the family's keys,
    # shapes and ranks; matched: random subspaces sized to remove the same share of the update norm as that defence
    # (measured on its training). `true` means same_rank.
    random: RandomKind | None = None
    controls: str | None = None  # the defence a random control controls (default: the orthogonal variant of its family and `at`)
    at: Literal["gradient", "update"] = "update"  # orthogonal: where the projection is enforced (seed: gradient)
    # regularized: strength of (lambda/2) sum <theta - theta0, blue - red>^2; asft: lambda of lambda sum ||(I - C) dW||^2
    reg_lambda: float = Field(1.0, ge=0)
    # safelora (defences/safelora.py), one of: project the modules whose cosine is at most this / the N least similar
    safelora_threshold: float | None = Field(None, ge=-1, le=1)
    safelora_layers: int | None = Field(None, gt=0)
    # the share of harmful samples in this variant's attack set (None: attack.harmful_ratio); see AttackConfig
    harmful_ratio: float | None = Field(None, ge=0, le=1)
    # per-variant changes to attack.training (the seed trains vanilla for 10 epochs and orthogonal for 3)
    training: dict[str, Any] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _unset_mode_settings_left_out(self, handler):
        """Settings of one mode (None by default) are written only when set: the variants of other modes dump as
        before those settings existed, so their stage keys did not change."""
        return {k: v for k, v in handler(self).items() if not (k in _OPTIONAL_VARIANT_KEYS and v is None)}

    @field_validator("random", mode="before")
    @classmethod
    def _random_bool(cls, value: Any) -> Any:
        return {True: "same_rank", False: None}.get(value, value) if isinstance(value, bool) else value

    def family(self, default: str) -> str:
        return self.directions or default

    def directions_key(self, default: str) -> str:
        """The name of the direction file this variant projects against."""
        if self.random == "matched":
            return f"matched-{self.name}"
        return ("random-" if self.random else "") + self.family(default)

    @model_validator(mode="after")
    def _fits_its_mode(self) -> "AttackVariant":
        from orthoguard.modes import check_variant

        check_variant(self)
        if self.controls is not None and not self.random:
            raise ValueError(f"variant '{self.name}': 'controls' names the defence of a random control; set random too")
        return self

    @model_validator(mode="after")
    def _known_training_keys(self) -> "AttackVariant":
        unknown = sorted(set(self.training) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown training key(s) {unknown} in variant '{self.name}'")
        return self


def _defended(variant: AttackVariant) -> bool:
    from orthoguard.modes import get_mode

    return get_mode(variant.mode).role != "undefended"


def _default_variants() -> list[AttackVariant]:
    return [AttackVariant(name="vanilla", mode="vanilla"), AttackVariant(name="orthogonal", mode="orthogonal")]


class VariantGrid(Strict):
    """Orthogonal variants for every combination, named ``<family>-<at>`` (``-random`` / ``-matched`` for the
    same-rank and matched controls). ``random: [false, true]`` is ``[false, same_rank]``."""

    directions: list[FamilyName]
    at: list[Literal["gradient", "update"]] = Field(default_factory=lambda: ["update"])
    random: list[RandomKind | bool | None] = Field(default_factory=lambda: [False, "same_rank", "matched"])

    def variants(self) -> list[dict[str, Any]]:
        suffix = {None: "", False: "", True: "-random", "same_rank": "-random", "matched": "-matched"}
        return [{"name": f"{d}-{a}{suffix[r]}", "mode": "orthogonal", "directions": d, "at": a, "random": r}
                for d in self.directions for a in self.at for r in self.random]


class AttackConfig(Strict):
    # which model the attack fine-tunes: the base model, or base + refusal LoRA merged ("aligned")
    target: Literal["base", "aligned"] = "aligned"
    training: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=3, learning_rate=5e-4, max_length=448, lora=LoraSettings(dropout=0.0))
    )
    variants: list[AttackVariant] = Field(default_factory=_default_variants)
    # refusal decay: every `probe_every` optimizer steps (and before and after training) the attacked model
    # answers `probe_prompts` fixed held-out harmful prompts; 0 turns the probe off
    probe_every: int = Field(0, ge=0)
    probe_prompts: int = Field(16, gt=0)
    probe_max_new_tokens: int = Field(32, gt=0)
    # The field's protocol (Huang et al., arXiv 2409.18169; Vaccine, Lisa, Booster): fine-tune on `samples` samples
    # of the benign task `benign_task` (orthoguard.tasks) of which a share `harmful_ratio` (p) are harmful (drawn
    # from the attack set). p < 1 needs both; p = 1 with samples unset is the pure harmful attack (every attack
    # sample). A set benign_task also gives every evaluated model its fine-tune accuracy (evaluation.fa_items).
    # A variant's own `harmful_ratio` overrides p for that variant. Left out of the dump when at their defaults.
    harmful_ratio: float = Field(1.0, ge=0, le=1)
    samples: int | None = Field(None, gt=0)
    benign_task: str | None = None

    @field_validator("benign_task")
    @classmethod
    def _known_task(cls, value: str | None) -> str | None:
        from orthoguard.tasks import task_names

        if value is not None and value not in task_names():
            raise ValueError(f"unknown benign task '{value}' (known: {', '.join(task_names())})")
        return value

    @model_serializer(mode="wrap")
    def _protocol_defaults_left_out(self, handler):
        """The protocol keys are written only when not at their defaults: configs without them dump as before
        they existed (the resolved config, and any hash of the attack section, did not change)."""
        defaults = {"harmful_ratio": 1.0, "samples": None, "benign_task": None}
        return {k: v for k, v in handler(self).items() if not (k in defaults and v == defaults[k])}

    def ratio_of(self, variant: AttackVariant) -> float:
        """The harmful ratio p of a variant's attack set: its own, else ``harmful_ratio``."""
        return self.harmful_ratio if variant.harmful_ratio is None else variant.harmful_ratio

    def mixture_of(self, variant: AttackVariant) -> dict[str, Any] | None:
        """``{"p", "n", "task"}`` of a variant that trains on a mixture (p < 1 or `samples` set); None for the pure
        harmful attack on every attack sample."""
        p = self.ratio_of(variant)
        if p >= 1 and self.samples is None:
            return None
        return {"p": p, "n": self.samples, "task": self.benign_task}

    @model_validator(mode="after")
    def _mixtures_complete(self) -> "AttackConfig":
        for v in self.variants:
            p = self.ratio_of(v)
            if p < 1:
                where = "attack.harmful_ratio" if v.harmful_ratio is None else f"attack.variants[{v.name}].harmful_ratio"
                for key, value in (("benign_task", self.benign_task), ("samples", self.samples)):
                    if value is None:
                        raise ValueError(f"attack.{key} is not set: {where} = {p:g} < 1 mixes harmful samples into "
                                         f"a benign task (set attack.benign_task and attack.samples)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _expand_grid(cls, raw: Any) -> Any:
        """``grid:`` adds its combinations to ``variants`` (the resolved config lists them all)."""
        if isinstance(raw, dict) and raw.get("grid") is not None:
            raw = dict(raw)
            grid = VariantGrid.model_validate(raw.pop("grid"))
            variants = raw.get("variants")
            raw["variants"] = (list(variants) if variants is not None else [v.model_dump() for v in _default_variants()]) + grid.variants()
        return raw

    @model_validator(mode="after")
    def _unique_names(self) -> "AttackConfig":
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate variant name(s) {dupes}")
        return self

    @model_validator(mode="after")
    def _controls_have_a_defence(self) -> "AttackConfig":
        for v in self.variants:
            if v.controls is not None and self._by_name(v.controls) is None:
                raise ValueError(f"variant '{v.name}': controls '{v.controls}', which is not a defended variant")
        return self

    def _by_name(self, name: str) -> AttackVariant | None:
        return next((v for v in self.variants if v.name == name and _defended(v) and not v.random), None)

    def defence_of(self, control: AttackVariant, default_family: str | None) -> AttackVariant | None:
        """The defended variant a random control controls: its ``controls`` key, else the orthogonal non-random
        variant with the same family and placement."""
        if not control.random:
            return None
        if control.controls is not None:
            return self._by_name(control.controls)
        family = control.directions or default_family
        return next((v for v in self.variants if v.mode == control.mode and not v.random and v.at == control.at
                     and (v.directions or default_family) == family), None)

    def controls_of(self, default_family: str) -> dict[str, dict[str, str]]:
        """Defence name -> {control kind: control name}."""
        out: dict[str, dict[str, str]] = {}
        for v in self.variants:
            defence = self.defence_of(v, default_family)
            if defence is not None:
                out.setdefault(defence.name, {}).setdefault(v.random, v.name)
        return out

    def training_for(self, variant: AttackVariant) -> TrainConfig:
        """The shared attack training settings with the variant's overrides applied."""
        merged = _deep_merge(self.training.model_dump(), variant.training)
        return _validate(TrainConfig, merged, f"attack.variants[{variant.name}].training")


class PromptSetRef(Strict):
    name: str
    limit: int | None = Field(None, gt=0)


class EvalConfig(Strict):
    backend: Literal["hf", "vllm"] = "hf"  # vllm: GPU generation through vLLM (the [vllm] extra)
    # generation precision (evaluation and refusal probes): "auto" (a merged bf16 copy where the CPU has native
    # bf16, else the weights' dtype), "model" (the weights' dtype), fp32, bf16
    dtype: Literal["model", "auto", "fp32", "bf16"] = "auto"
    max_new_tokens: int = Field(96, gt=0)
    batch_size: int = Field(16, gt=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # the refusal judge: "keyword", or an LLM refusal judge {name: sorry-bench | strongreject, endpoint: URL, model: M}
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    # an optional harm judge on the harmful sets, reported apart from refusal: {name: harmbench | strongreject, ...}
    harm_judge: JudgeSpec | None = None
    # extra registered prompt sets (orthoguard.prompts: advbench, harmbench, jailbreakbench, strongreject,
    # strongreject-small, xstest-safe, xstest-unsafe, mtbench) or files, each {name, limit}
    prompt_sets: list[PromptSetRef] = Field(default_factory=list)
    # fine-tune accuracy (when attack.benign_task is set): every model on the first fa_items test items of the task
    fa_items: int = Field(200, gt=0)

    @model_serializer(mode="wrap")
    def _fa_default_left_out(self, handler):
        """``fa_items`` is written only when not 200: configs without it dump (and hash) as before it existed;
        the evaluate stage hashes it itself when a benign task is set."""
        left_out = {"fa_items": 200, "harm_judge": None}  # harm_judge: unset, as before it existed
        return {k: v for k, v in handler(self).items() if not (k in left_out and v == left_out[k])}

    @model_validator(mode="after")
    def _judges_measure_what_they_are_for(self) -> "EvalConfig":
        from orthoguard.judges import HARM, REFUSAL

        if REFUSAL not in self.judge.measures:
            raise ValueError(f"evaluation.judge: {self.judge.name!r} judges harm, not refusal; name it under "
                             f"evaluation.harm_judge and keep a refusal judge (keyword, sorry-bench, strongreject) here")
        if self.harm_judge is not None and HARM not in self.harm_judge.measures:
            raise ValueError(f"evaluation.harm_judge: {self.harm_judge.name!r} judges refusal, not harm "
                             "(harm judges: harmbench, strongreject)")
        return self

    @field_validator("prompt_sets")
    @classmethod
    def _names_unique_and_known(cls, refs: list[PromptSetRef]) -> list[PromptSetRef]:
        """Each extra set is a registered name or an existing file, and its name (a file's stem) is neither one
        of the two sets every run builds nor another set's: results are stored per set name."""
        from orthoguard.prompts import PROMPT_SETS, RESERVED_SET_NAMES, prompt_set_name

        seen: dict[str, str] = {}
        for ref in refs:
            if ref.name not in PROMPT_SETS and not Path(ref.name).is_file():
                raise ValueError(f"unknown prompt set '{ref.name}': not a registered set "
                                 f"({', '.join(sorted(PROMPT_SETS))}) and not a file")
            name = prompt_set_name(ref.name)
            if name in RESERVED_SET_NAMES:
                raise ValueError(f"'{ref.name}' would be stored as '{name}', the name of a set every run builds "
                                 f"({', '.join(RESERVED_SET_NAMES)}): rename the file")
            if name in seen:
                raise ValueError(f"'{ref.name}' and '{seen[name]}' would both be stored as '{name}': rename one")
            seen[name] = ref.name
        return refs


class StageResources(Strict):
    """What one SLURM job of a stage asks for; unset keys take the ``cluster`` section's."""

    gpus_per_job: int | None = Field(None, ge=0)
    cpus_per_job: int | None = Field(None, gt=0)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int | None = Field(None, gt=0)


class ClusterConfig(Strict):
    """``orthoguard run --executor slurm``: every stage is one SLURM job submitted through submitit. None of these
    keys is part of a stage's key (where a stage ran does not change what it computed)."""

    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(8, gt=0)  # also the stage's torch threads
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(720, gt=0)  # per job; a timed-out training stage resumes from its checkpoint on rerun
    setup: list[str] = []  # shell lines each job runs first (module load ..., source .venv/bin/activate)
    sbatch: dict[str, str | int] = {}  # further sbatch options (qos, constraint, ...)
    # per stage: a stage kind ("data", "attack", "evaluate") or one stage ("attack:vanilla"), the latter first
    stages: dict[str, StageResources] = {}


class ExperimentConfig(Strict):
    name: str = "experiment"
    output_dir: str = "runs/experiment"
    seed: int = Field(0, ge=0)
    # torch's intra-op threads; None: $ORTHOGUARD_THREADS, else the physical cores this process may use
    threads: int | None = Field(None, gt=0)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    refusal: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1, learning_rate=2e-4, batch_size=8, gradient_accumulation_steps=4))
    directions: DirectionsConfig = Field(default_factory=DirectionsConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)  # only `run --executor slurm` reads it

    @model_validator(mode="after")
    def _matched_controls_have_a_defence(self) -> "ExperimentConfig":
        for v in self.attack.variants:
            if v.random == "matched" and self.attack.defence_of(v, self.directions.kind) is None:
                raise ValueError(f"attack.variants[{v.name}]: a matched control needs the defence it controls (an "
                                 "orthogonal, non-random variant of its family and `at`, or `controls: NAME`)")
        return self

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named sections (plus the seed), used to decide whether a stage is stale."""
        payload = {s: getattr(self, s).model_dump(mode="json") for s in sections}
        payload["seed"] = self.seed
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ---------------------------------------------------------------------------------------------------------
# Seed compatibility: the original repository's per-step JSON keys.

def read_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def _validate(model: type[BaseModel], raw: dict[str, Any], source: str):
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown config key '{where}'") from None
        raise ConfigError(f"{source}: {where}: {err['msg']}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a full experiment config (YAML or JSON). Unknown keys and wrong types raise ConfigError."""
    raw = read_mapping(path)
    if is_seed_config(raw):
        raise ConfigError(
            f"{path}: this is a seed single-step config (base_model_name/num_epochs keys); "
            "use it with train-refusal/train-attack, or write an experiment config for 'run'"
        )
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, value)
    return _validate(ExperimentConfig, raw, str(path))


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``--set a.b.c=value``; one ``ConfigError`` line when a part of the path
    is a value, not a section (``--set seed.x=3``)."""
    node, walked = raw, []
    *parents, leaf = dotted.split(".")
    if not all(parents) or not leaf:
        raise ConfigError(f"--set {dotted}: empty key in the path")
    for key in parents:
        walked.append(key)
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(walked)}' is a value ({child!r}), not a section")
        node = child
    node[leaf] = value


def dump_config(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


from orthoguard.seed_config import (  # noqa: E402,F401  (the seed's step configs; importable from here as before)
    SEED_LORA_KEYS, SEED_PATH_KEYS, SEED_TRAIN_KEYS, is_seed_config, seed_train_config)
