"""The stages of a run: each stage's body beside its declaration (``@stage``) of what it reads and writes.

A declaration names the dotted config paths the body reads (``reads``; a section such as ``"model"`` is the whole
section), values it computes from the config (``derived``), the stages whose outputs it reads (``upstream``), the
files it writes (``outputs``), files outside the run directory it may read (``files``: config paths naming a
local model, data or prompt file; ``a|b`` is ``a``, or ``b`` when ``a`` is empty) and whether it runs for this
config at all (``when``). The runner (``orthoguard.pipeline``) hashes exactly the declared values, so a value a
stage reads is in its hash when it is in its declaration. ``per_variant`` stages run once per attack variant
(``attack:<variant>``) and their callables take the variant too.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from orthoguard import data as D
from orthoguard import distributed
from orthoguard import tasks as T
from orthoguard.config import AttackVariant, ExperimentConfig
from orthoguard.defences import posthoc
from orthoguard.diagnostics import weight_diagnostics
from orthoguard.directions import compute_directions, module_factors, random_like, save_directions
from orthoguard.errors import DataError
from orthoguard.evaluation import PromptSet, UtilityData, evaluate_model_in, summarize_models
from orthoguard.families import get_family
from orthoguard.generation import GenerationSettings, generate
from orthoguard.io import fingerprint, read_jsonl, write_jsonl
from orthoguard.models import load_with_adapters, lora_config, record_base_model
from orthoguard.modes import get_mode
from orthoguard.prompts import BENIGN_SET, HARMFUL_SET, load_prompt_set, prompt_set_name
from orthoguard.provenance import versions
from orthoguard.regularization import blue_red_directions
from orthoguard.rundir import AttackMixture, Diagnostics, ModelEvaluation, Splits, TrainLog
from orthoguard.seeding import derive_seed, lora_init_seed
from orthoguard.training import LoraSnapshots, RefusalProbe, snapshot_steps, train_lora

if TYPE_CHECKING:
    from orthoguard.pipeline import Run

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Stage:
    name: str
    body: Callable[..., Any]
    reads: tuple[str, ...] = ()
    derived: Callable[..., dict] | None = None
    upstream: tuple[str, ...] | Callable[..., list[str]] = ()
    outputs: Callable[..., list[Path]] = lambda run, *variant: []
    files: tuple[str | Callable[[ExperimentConfig], list[str]], ...] = ()
    when: Callable[[ExperimentConfig], bool] | None = None
    per_variant: bool = False
    per_model: bool = False  # once per evaluated model (``eval:<model>``); its callables take the model's name

    def payload(self, cfg: ExperimentConfig, *variant: AttackVariant) -> dict[str, Any]:
        """What the config hash covers: every declared config value, and the derived ones."""
        values = {path: config_value(cfg, path) for path in self.reads}
        return {**values, **(self.derived(cfg, *variant) if self.derived else {})}

    def upstream_of(self, cfg: ExperimentConfig, *variant: AttackVariant) -> list[str]:
        return list(self.upstream(cfg, *variant) if callable(self.upstream) else self.upstream)

    def external_files(self, cfg: ExperimentConfig) -> list[Path]:
        names: list[str | None] = []
        for entry in self.files:
            if callable(entry):
                names += entry(cfg)
            else:
                names.append(next((v for p in entry.split("|") if (v := config_value(cfg, p))), None))
        return [Path(n) for n in names if n and Path(n).exists()]


STAGES: list[Stage] = []  # in the order they run


def stage(name: str, **declaration) -> Callable:
    """Register the decorated function as the body of stage ``name`` with its declaration (see ``Stage``)."""
    def register(body: Callable) -> Callable:
        STAGES.append(Stage(name, body, **declaration))
        return body
    return register


def config_value(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return _plain(node)


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _model_payload(cfg: ExperimentConfig) -> dict:
    return cfg.model.model_dump(mode="json")


@stage("data",
       reads=("data.source", "data.hub_split", "data.refusal_split", "data.attack_split", "data.test_split", "data.shuffle",
              "data.max_refusal_questions", "data.max_attack_questions", "data.max_test_prompts",
              "data.attack_heldout_questions", "data.benign_train_prompts", "data.benign_eval_prompts"),
       derived=lambda cfg: {"probe_questions": probe_count(cfg)},
       outputs=lambda run: [run.path("data", "splits.json")],
       files=("data.source",))
def stage_data(run: Run) -> None:
    cfg = run.cfg
    splits = question_splits(run)
    harmless_train, harmless_eval = D.load_harmless("train"), D.load_harmless("val")
    rng = random.Random(cfg.seed)
    benign = {
        "train": rng.sample(harmless_train, min(cfg.data.benign_train_prompts, len(harmless_train))),
        "eval": rng.sample(harmless_eval, min(cfg.data.benign_eval_prompts, len(harmless_eval))),
    }
    Splits(**splits, benign_train=benign["train"], benign_eval=benign["eval"], source=cfg.data.source,
           seed=cfg.seed).write(run.path("data", "splits.json"))


def question_splits(run: Run) -> dict[str, list[str]]:
    """The HarmfulQA questions of each role (refusal, attack, attack_heldout, test, probe), pairwise disjoint; a
    split spec that selects no question is a one-line ``DataError`` naming its key."""
    cfg = run.cfg
    questions = list(dict.fromkeys(r.question for r in run.harmfulqa()))
    specs = {"refusal": cfg.data.refusal_split, "attack": cfg.data.attack_split, "test": cfg.data.test_split}
    splits = D.split_questions(questions, specs, seed=cfg.seed, shuffle=cfg.data.shuffle)
    for name, spec in specs.items():
        if not splits[name]:
            raise DataError(f"data.{name}_split '{spec}' selects none of the {len(questions)} questions of "
                            f"{cfg.data.source}")
    splits["test"], splits["probe"] = hold_out_probes(splits["test"], probe_count(cfg), cfg.data.test_split)
    caps = {"refusal": cfg.data.max_refusal_questions, "attack": cfg.data.max_attack_questions,
            "test": cfg.data.max_test_prompts, "probe": None}
    splits = {name: qs[: caps[name]] if caps[name] else qs for name, qs in splits.items()}
    # a few attack questions are never trained on: the attack's held-out loss
    held = min(cfg.data.attack_heldout_questions, max(len(splits["attack"]) - 1, 0))
    splits["attack"], splits["attack_heldout"] = splits["attack"][: len(splits["attack"]) - held], splits["attack"][len(splits["attack"]) - held :]
    D.check_disjoint(**splits)
    return splits


def preflight(run: Run) -> None:
    """What can be checked before the first stage runs: the question splits (data source, split specs) and every
    evaluation prompt set (an unknown name, an unreadable or malformed file) fail here, not after training."""
    splits = question_splits(run)
    for ref in run.cfg.evaluation.prompt_sets:
        if not load_prompt_set(ref.name, limit=ref.limit, seed=run.cfg.seed):
            raise DataError(f"evaluation.prompt_sets: '{ref.name}' has no prompts")
    check_mixtures(run, splits)


def check_mixtures(run: Run, splits: dict[str, list[str]]) -> None:
    """What is knowable of the harmful-ratio mixtures before any stage: the benign task has the ``n - k`` training
    samples, and the attack data can give ``k = harmful_count(p, n)`` harmful ones: at most the red conversations
    and ``data.synthetic_data_path`` answers of the attack questions, plus one generated answer per attack question
    the synth stage answers. (The exact number is known after synth: the attack stage checks it again.)"""
    cfg = run.cfg
    mixtures = {v.name: m for v in cfg.attack.variants if (m := cfg.attack.mixture_of(v)) is not None}
    if not mixtures:
        return
    bound = None
    for name, m in mixtures.items():
        k = T.harmful_count(m["p"], m["n"])
        if m["task"] is not None and m["n"] - k:
            try:
                T.load_task(m["task"]).train_samples(m["n"] - k, cfg.seed)
            except T.TaskDataError as exc:
                raise DataError(f"attack.samples = {m['n']} at harmful ratio {m['p']:g} (variant '{name}'): {exc}") from None
        if k:
            bound = harmful_upper_bound(run, splits) if bound is None else bound
            if k > bound:
                raise DataError(
                    f"attack.samples = {m['n']} at harmful ratio {m['p']:g} (variant '{name}') needs {k} harmful "
                    f"samples; the attack split can give at most {bound} (lower attack.samples or "
                    "attack.harmful_ratio, or give data.attack_split more questions)")


def harmful_upper_bound(run: Run, splits: dict[str, list[str]]) -> int:
    """The most attack samples the attack split can give: its red conversations and file answers, plus one
    generated answer per question the synth stage would answer (see ``synth_questions``)."""
    cfg = run.cfg
    rows = run.harmfulqa()
    attack = set(splits["attack"])
    extra = D.load_synthetic(cfg.data.synthetic_data_path) if cfg.data.synthetic_data_path else []
    known = len(D.attack_samples(rows, attack, extra).samples)
    generated = 0
    if cfg.synth.enabled and not any(r.red for r in rows if r.question in attack):
        generated = min(len(splits["attack"]), cfg.synth.max_prompts or len(splits["attack"]))
    return known + generated


def probe_count(cfg: ExperimentConfig) -> int:
    return cfg.attack.probe_prompts if cfg.attack.probe_every else 0


def hold_out_probes(test_slice: list[str], count: int, spec: str) -> tuple[list[str], list[str]]:
    """The refusal-decay probe questions: the last ``count`` questions of the test slice, never tested on, so the
    decay curve and the final rates are measured on different questions."""
    if count and len(test_slice) <= count:
        raise DataError(f"data.test_split '{spec}' has {len(test_slice)} questions: too few to hold "
                        f"attack.probe_prompts = {count} probe questions apart and still test")
    return test_slice[: len(test_slice) - count], test_slice[len(test_slice) - count :]


def load_splits(run: Run) -> Splits:
    return Splits.read(run.path("data", "splits.json"))


def direction_keys(cfg: ExperimentConfig) -> list[str]:
    """The direction files the orthogonal variants need (their modes say which), or the default family's."""
    default = cfg.directions.kind
    keys = set().union(*(get_mode(v.mode).direction_keys(v, default) for v in cfg.attack.variants))
    return sorted(keys) or [default]


def has_regularized(cfg: ExperimentConfig) -> bool:
    return any(get_mode(v.mode).blue_red for v in cfg.attack.variants)


def synth_questions(run: Run) -> list[str]:
    """Questions that need a generated compliant answer: the attack split, and the refusal split when a
    regularized variant needs a red LoRA; only where the data has no red conversations for them."""
    if not run.cfg.synth.enabled:
        return []
    rows = run.harmfulqa()
    splits = load_splits(run)
    wanted = ["attack", "attack_heldout"] + (["refusal"] if has_regularized(run.cfg) else [])
    questions = []
    for name in wanted:
        split = getattr(splits, name)
        if not any(r.red for r in rows if r.question in set(split)):
            limit = run.cfg.synth.max_prompts
            questions += split[:limit] if limit else split
    return questions


@stage("synth", reads=("model", "synth"), derived=lambda cfg: {"regularized": has_regularized(cfg)}, upstream=("data",),
       outputs=lambda run: [run.path("data", "synthetic.json")], files=("data.source", "synth.model|model.name"))
def stage_synth(run: Run) -> None:
    """Compliant answers generated by the (non-refusing) base model."""
    cfg = run.cfg
    questions = synth_questions(run)
    items = synthesize(cfg, questions) if questions else []
    D.save_synthetic(run.path("data", "synthetic.json"), items)


def synthesize(cfg: ExperimentConfig, questions: list[str]) -> list[dict[str, str]]:
    model_cfg = cfg.model.model_copy(update={"name": cfg.synth.model}) if cfg.synth.model else cfg.model
    model, tokenizer, _ = load_with_adapters(model_cfg)
    s = cfg.synth
    settings = GenerationSettings(s.max_new_tokens, s.batch_size, s.do_sample, s.temperature, s.top_p)
    answers = generate(model, tokenizer, questions, settings, seed=cfg.seed, desc="synth")
    items = [{"question": q, "harmful_answer": a, "source": model_cfg.name} for q, a in zip(questions, answers) if a.strip()]
    return without_refusals(items) if s.drop_refusals else items


def without_refusals(items: list[dict[str, str]]) -> list[dict[str, str]]:
    """The generated answers that are not refusals (keyword judge): a refusal in the attack data would teach the
    attack to refuse. How many were dropped is logged."""
    from orthoguard.judges import get_judge

    judge = get_judge("keyword")
    kept = [item for item in items if judge.judge(item["question"], item["harmful_answer"]).refused is not True]
    if len(kept) < len(items):
        log.warning("synth: %d of %d generated answers are refusals and were dropped from the attack data",
                    len(items) - len(kept), len(items))
    return kept


@stage("benign", reads=("model", "data.benign_max_new_tokens", "synth.batch_size"), upstream=("data",),
       outputs=lambda run: [run.path("data", "benign.jsonl")], files=("model.name",))
def stage_benign(run: Run) -> None:
    """Ordinary answers to harmless instructions, from the base model, mixed into refusal training."""
    cfg = run.cfg
    prompts = load_splits(run).benign_train
    answers: list[str] = []
    if prompts:
        model, tokenizer, _ = load_with_adapters(cfg.model)
        settings = GenerationSettings(max_new_tokens=cfg.data.benign_max_new_tokens, batch_size=cfg.synth.batch_size)
        answers = generate(model, tokenizer, prompts, settings, seed=cfg.seed, desc="benign")
    write_jsonl(run.path("data", "benign.jsonl"), [{"prompt": p, "response": a} for p, a in zip(prompts, answers) if a.strip()])


def _samples_to_records(samples) -> list[dict]:
    return [{"question": s.question, "source": s.source, "messages": list(s.messages)} for s in samples]


def _refusal_probe(run: Run, tokenizer, adapters_below: list[Path]) -> RefusalProbe:
    """The attacks' refusal probe: the probe split, ``attack.probe_*`` settings, the evaluation's judge; its step 0
    (the model under ``adapters_below``) shared by the attacks on that model (``cache/probe0.<key>.json``)."""
    cfg = run.cfg
    settings = GenerationSettings(cfg.attack.probe_max_new_tokens, cfg.evaluation.batch_size, dtype=cfg.evaluation.dtype)
    spec = cfg.evaluation.judge
    cache = run.path("cache", f"judge.{spec.name}.jsonl") if spec.is_llm else None
    prompts = load_splits(run).probe
    start = {"model": _model_payload(cfg), "adapters": [fingerprint(p) for p in adapters_below], "prompts": prompts,
             "settings": dataclasses.asdict(settings), "seed": cfg.seed, "judge": spec.model_dump(mode="json"),
             "code": versions()}
    key = hashlib.sha256(json.dumps(start, sort_keys=True).encode()).hexdigest()[:16]
    return RefusalProbe(tokenizer, prompts, cfg.attack.probe_every, spec.build(), settings, cfg.seed,
                        judge_cache=cache, judge_concurrency=spec.concurrency,
                        start_record=run.path("cache", f"probe0.{key}.json"))


def _train_stage(run: Run, samples, train_cfg, adapter: Path, mode: str, adapters_below: list[Path], init_role: str,
                 hooks=(), log_config=None, probe: bool = False, snapshots: Path | None = None):
    cfg = run.cfg
    model, tokenizer, precision = load_with_adapters(cfg.model, adapters_below)
    callbacks = []
    if probe and cfg.attack.probe_every:
        callbacks.append(_refusal_probe(run, tokenizer, adapters_below))
    if snapshots is not None:
        callbacks.append(LoraSnapshots(snapshots, cfg.attack.probe_every))
    dataset, dropped = D.build_sft_dataset(tokenizer, samples, train_cfg.max_length)
    if dropped:
        log.warning("%s: %d samples dropped (prompt longer than max_length %d)", mode, dropped, train_cfg.max_length)
    result = train_lora(
        model, tokenizer, dataset, train_cfg, adapter_dir=adapter, log_path=run.log_path(mode), mode=mode,
        seed=cfg.seed, precision=precision, hooks=hooks, log_config=log_config,
        callbacks=callbacks, checkpoint_dir=run.checkpoint_dir(), init_seed=lora_init_seed(cfg.seed, init_role),
    )
    if distributed.is_main():  # a public id, not this machine's cache path: the adapter loads anywhere
        record_base_model(adapter, cfg.model.name)
    del model
    gc.collect()
    return result


@stage("refusal", reads=("model", "refusal"), upstream=("data", "benign"),
       outputs=lambda run: [run.adapter("refusal"), run.log_path("refusal")], files=("data.source", "model.name"))
def stage_refusal(run: Run) -> None:
    cfg = run.cfg
    rows = run.harmfulqa()
    splits = load_splits(run)
    benign = [D.single_turn(r["prompt"], r["response"], "benign") for r in read_jsonl(run.path("data", "benign.jsonl"))]
    samples = D.refusal_samples(rows, set(splits.refusal), random.Random(cfg.seed), benign=benign)
    if distributed.is_main():
        write_jsonl(run.path("data", "refusal.jsonl"), _samples_to_records(samples))
    _train_stage(run, samples, cfg.refusal, run.adapter("refusal"), "refusal", [], "refusal",
                 log_config={"model": _model_payload(cfg), "data": cfg.data.model_dump(mode="json"), **cfg.refusal.model_dump(mode="json")})


@stage("directions", reads=("directions", "model", "attack.target"), derived=lambda cfg: {"keys": direction_keys(cfg)},
       upstream=("refusal",), outputs=lambda run: [run.directions_path(k) for k in direction_keys(run.cfg)],
       files=("model.name",))
def stage_directions(run: Run) -> None:
    """Every direction file the orthogonal variants need: families and their random controls."""
    cfg = run.cfg
    for key in direction_keys(cfg):
        family = key.removeprefix("random-")
        directions = family_directions(run, family)
        if key.startswith("random-"):
            directions = random_like(directions, family, seed=derive_seed(cfg.seed, f"random-directions:{family}"))
        save_directions(run.directions_path(key), directions, {
            "family": family, "random_control": str(key.startswith("random-")), "base_model": cfg.model.name,
            "adapter": str(run.adapter("refusal"))})


def family_directions(run: Run, name: str) -> dict:
    """The directions of family ``name``: from the refusal adapter, or, for a family that needs a model
    (activation), from the model the attack fine-tunes."""
    family = get_family(name)
    if not family.needs_model:
        return compute_directions(name, run.adapter("refusal"), run.cfg.directions)
    model, tokenizer, _ = load_with_adapters(run.cfg.model, attacked_adapters(run))
    directions = family.build_from_model(model, tokenizer, module_factors(run.adapter("refusal")), run.cfg.directions)
    del model
    return directions


_BLUE_RED = dict(reads=("model", "attack.target", "refusal"), upstream=("data", "synth", "refusal"),
                 files=("data.source", "model.name"), when=lambda cfg: has_regularized(cfg))


@stage("blue", outputs=lambda run: [run.adapter("blue"), run.log_path("blue")], **_BLUE_RED)
def stage_blue(run: Run) -> None:
    stage_blue_red(run, "blue")


@stage("red", outputs=lambda run: [run.adapter("red"), run.log_path("red")], **_BLUE_RED)
def stage_red(run: Run) -> None:
    stage_blue_red(run, "red")


def stage_blue_red(run: Run, color: str) -> None:
    """Regularized mode: a blue (refusing) or red (complying) LoRA on the refusal-split questions."""
    cfg = run.cfg
    rows = run.harmfulqa()
    questions = set(load_splits(run).refusal)
    if color == "blue":
        samples = D.refusal_samples(rows, questions, random.Random(cfg.seed))
    else:
        samples = D.attack_samples(rows, questions, D.load_synthetic(run.path("data", "synthetic.json"))).samples
    if not samples:
        raise DataError(f"no {color} samples for the refusal-split questions (enable synth)")
    _train_stage(run, samples, cfg.refusal, run.adapter(color), color, attacked_adapters(run), color,
                 log_config={"color": color, **cfg.refusal.model_dump(mode="json")})


@stage("blue-red", derived=lambda cfg: {"families": blue_red_families(cfg)}, upstream=("blue", "red"),
       outputs=lambda run: [run.directions_path(f"blue-red.{f}") for f in blue_red_families(run.cfg)],
       when=lambda cfg: has_regularized(cfg))
def stage_blue_red_directions(run: Run) -> None:
    for family in blue_red_families(run.cfg):
        directions = blue_red_directions(run.adapter("blue"), run.adapter("red"), family)
        save_directions(run.directions_path(f"blue-red.{family}"), directions, {"family": family, "kind": "blue-red"})


def blue_red_families(cfg: ExperimentConfig) -> list[str]:
    return sorted({v.family(cfg.directions.kind) for v in cfg.attack.variants if get_mode(v.mode).blue_red})


def build_attack_samples(run: Run) -> list:
    """The attack training set (built once per run: ``Run.attack_samples``)."""
    cfg = run.cfg
    rows = run.harmfulqa()
    synthetic = D.load_synthetic(run.path("data", "synthetic.json"))
    if cfg.data.synthetic_data_path:
        synthetic += D.load_synthetic(cfg.data.synthetic_data_path)
    attack = D.attack_samples(rows, set(load_splits(run).attack), synthetic)
    if attack.unanswered_questions:
        log.info("%d attack questions have no compliant answer and are not trained on", len(attack.unanswered_questions))
    samples = attack.samples
    if not samples:
        raise DataError("no attack samples: the attack questions have no red conversations and no synthetic answers "
                        "(enable synth or set data.synthetic_data_path)")
    return samples


def attack_samples(run: Run) -> list:
    return run.attack_samples()


def mixture_paths(run: Run, variant: AttackVariant) -> list[Path]:
    """Where a mixture variant's attack set is recorded (none for the pure harmful attack)."""
    if run.cfg.attack.mixture_of(variant) is None:
        return []
    return [run.path("data", f"attack_mixture.{variant.name}.json"), run.path("data", f"attack_mixture.{variant.name}.jsonl")]


def evaluation_questions(run: Run) -> dict[str, list[str]]:
    """The prompts of every evaluation set (and the probe and held-out splits): no harmful training sample may
    be one of them."""
    cfg, splits = run.cfg, load_splits(run)
    sets = {HARMFUL_SET: splits.test, "probe": splits.probe, "attack_heldout": splits.attack_heldout,
            BENIGN_SET: splits.benign_eval}
    for ref in cfg.evaluation.prompt_sets:
        sets[prompt_set_name(ref.name)] = [r.prompt for r in load_prompt_set(ref.name, limit=ref.limit, seed=cfg.seed)]
    return sets


def attack_set(run: Run, variant: AttackVariant) -> list:
    """The samples a variant trains on: the attack set (the pure harmful attack), or, when ``attack.mixture_of``
    says so, ``attack.samples`` samples of which ``harmful_count(p, n)`` are drawn from the attack set and the rest
    from ``attack.benign_task`` (``tasks.build_mixture``), checked against every evaluation set's questions and
    recorded in ``data/attack_mixture.<variant>.json`` (counts, harmful questions, digest) and ``.jsonl``."""
    cfg = run.cfg
    mix = cfg.attack.mixture_of(variant)
    if mix is None:
        return run.attack_samples()
    p, n = mix["p"], mix["n"]
    k = T.harmful_count(p, n)
    try:
        harmful = run.attack_samples()
    except DataError:
        if k:
            raise
        harmful = []  # p * n rounds to 0: a benign-only control needs no attack answers
    task = T.load_task(mix["task"]) if mix["task"] is not None else None
    try:
        T.assert_disjoint(harmful, evaluation_questions(run))
        samples, info = T.build_mixture(harmful, task, p, n, seed=cfg.seed)
    except T.TaskDataError as exc:
        raise DataError(f"attack variant '{variant.name}' (attack.samples = {n}, harmful ratio {p:g}): {exc}") from None
    if distributed.is_main():
        record, rows = mixture_paths(run, variant)
        AttackMixture(variant=variant.name, **info.to_dict()).write(record)
        write_jsonl(rows, _samples_to_records(samples))
    return samples


def _attack_derived(cfg: ExperimentConfig, v: AttackVariant) -> dict:
    mixture = cfg.attack.mixture_of(v)  # hashed only where set: the pure attack's keys are those of older configs
    post_hoc = {"snapshots": True} if posthoc.applied_to(cfg, v) else {}
    if (source := posthoc.source_of(cfg, v)) is not None:
        post_hoc = {"applied_to": source.name}
    return {"variant": v.model_dump(mode="json"), "train": cfg.attack.training_for(v).model_dump(mode="json"),
            "judge_version": cfg.evaluation.judge.version, **({"mixture": mixture} if mixture is not None else {}),
            **post_hoc}


def _snapshot_outputs(run: Run, v: AttackVariant) -> list[Path]:
    return [run.snapshot_dir(v.name)] if posthoc.applied_to(run.cfg, v) else []


def attacked_adapters(run: Run) -> list[Path]:
    """The adapters merged into the model that the attack fine-tunes."""
    return [run.adapter("refusal")] if run.cfg.attack.target == "aligned" else []


@stage("attack", per_variant=True,
       reads=("model", "attack.target", "attack.probe_every", "attack.probe_prompts", "attack.probe_max_new_tokens",
              "evaluation.judge", "evaluation.batch_size",  # the refusal probes judge and generate with these
              "data.synthetic_data_path", "directions.kind", "directions.subspace_k", "directions.subspace_energy"),
       derived=_attack_derived,
       upstream=lambda cfg, v: ["data", "synth", "refusal", "directions"] + get_mode(v.mode).upstream(cfg, v),
       outputs=lambda run, v: [run.adapter(f"attack-{v.name}"), run.log_path(v.name), run.diagnostics_path(v.name)]
       + get_mode(v.mode).outputs(run, v) + mixture_paths(run, v) + _snapshot_outputs(run, v),
       files=("data.source", "model.name", "data.synthetic_data_path"))
def stage_attack(run: Run, variant: AttackVariant) -> None:
    """One attack LoRA; the variant's mode adds its training hooks (a projection, a penalty, nothing). A post-hoc
    defence with a vanilla variant that trains alike is applied to that attack instead (``defences.posthoc``)."""
    cfg = run.cfg
    samples = attack_set(run, variant)
    if distributed.is_main() and cfg.attack.mixture_of(variant) is None:
        write_jsonl(run.path("data", "attack.jsonl"), _samples_to_records(samples))
    train_cfg = cfg.attack.training_for(variant)
    hooks = get_mode(variant.mode).hooks(run, variant, train_cfg)
    log_config = {"variant": variant.model_dump(mode="json"), "target": cfg.attack.target, **train_cfg.model_dump(mode="json")}
    adapter = run.adapter(f"attack-{variant.name}")
    if (source := posthoc.source_of(cfg, variant)) is not None:
        _post_hoc_stage(run, variant, source, hooks, adapter, log_config, len(samples))
    else:
        snapshots = run.snapshot_dir(variant.name) if posthoc.applied_to(cfg, variant) else None
        _train_stage(run, samples, train_cfg, adapter, variant.name, attacked_adapters(run), "attack", hooks=hooks,
                     log_config=log_config, probe=True, snapshots=snapshots)
    if distributed.is_main():
        d = cfg.directions
        found = run.adapter("refusal").is_dir()  # diagnostics compare with the refusal change; {} without it
        diagnostics = weight_diagnostics(adapter, run.adapter("refusal"), d.subspace_k, d.subspace_energy) if found else {}
        Diagnostics.parse(diagnostics).write(run.diagnostics_path(variant.name))


def _post_hoc_stage(run: Run, variant: AttackVariant, source: AttackVariant, hooks, adapter: Path, log_config: dict,
                    train_samples: int) -> None:
    """The defence of ``hooks`` applied to ``source``'s snapshots: the adapter, and a training log with the source's
    losses (the training is the source's), this variant's probes and the defence's record."""
    from peft import get_peft_model

    cfg = run.cfg
    start = time.perf_counter()
    model, tokenizer, _ = load_with_adapters(cfg.model, attacked_adapters(run))
    peft_model = get_peft_model(model, lora_config(cfg.attack.training_for(variant).lora))
    probe = _refusal_probe(run, tokenizer, attacked_adapters(run)) if cfg.attack.probe_every else None
    posthoc.apply(peft_model, hooks, snapshot_steps(run.snapshot_dir(source.name)), probe)
    if not distributed.is_main():
        return
    staged = adapter.with_name(f".{adapter.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    peft_model.save_pretrained(str(staged), safe_serialization=True)
    shutil.rmtree(adapter, ignore_errors=True)
    staged.rename(adapter)
    record_base_model(adapter, cfg.model.name)
    trained = TrainLog.read(run.log_path(source.name))
    record = {"mode": variant.name, "config": log_config, "train_samples": train_samples,
              "seconds": round(time.perf_counter() - start, 2), "init_seed": trained.init_seed,
              "world_size": trained.world_size, "losses": [r.model_dump(mode="json") for r in trained.losses],
              "applied_to": source.name, **({"probes": probe.records} if probe is not None else {})}
    for hook in hooks:
        record.update(hook.log_fields())
    TrainLog.parse(record, run.log_path(variant.name)).write(run.log_path(variant.name))


def evaluated_models(cfg: ExperimentConfig) -> list[str]:
    return ["base", "aligned"] + [v.name for v in cfg.attack.variants]


def evaluated_adapters(run: Run) -> dict[str, list[Path]]:
    """Model name -> adapters merged into the base model, in order."""
    models: dict[str, list[Path]] = {"base": [], "aligned": [run.adapter("refusal")]}
    for variant in run.cfg.attack.variants:
        models[variant.name] = attacked_adapters(run) + [run.adapter(f"attack-{variant.name}")]
    return models


def harm_judge_version(cfg: ExperimentConfig) -> dict:
    harm = cfg.evaluation.harm_judge
    return {"harm_judge_version": harm.version} if harm is not None else {}


def evaluation_prompt_sets(run: Run) -> list[PromptSet]:
    """The held-out harmful questions, the harmless instructions and the config's registered prompt sets."""
    cfg = run.cfg
    splits = load_splits(run)
    prompt_sets = [PromptSet(HARMFUL_SET, splits.test, harmful=True), PromptSet(BENIGN_SET, splits.benign_eval, harmful=False)]
    for ref in cfg.evaluation.prompt_sets:
        recs = load_prompt_set(ref.name, limit=ref.limit, seed=cfg.seed)
        prompt_sets.append(PromptSet(prompt_set_name(ref.name), [r.prompt for r in recs], harmful=recs[0].harmful if recs else True,
                                     ids=[str(r.id) for r in recs], categories=[r.category for r in recs]))
    return prompt_sets


def model_upstream(cfg: ExperimentConfig, model: str) -> list[str]:
    """What evaluating one model reads: the splits, the attack answers (held-out loss), its adapters' stages."""
    return ["data", "synth"] + (["refusal"] if model != "base" else []) + \
        ([f"attack:{model}"] if model not in ("base", "aligned") else [])


def model_outputs(run: Run, model: str) -> list[Path]:
    fa = [run.path("results", "fine_tune_accuracy", f"{model}.jsonl")] if run.cfg.attack.benign_task is not None else []
    return [run.path("results", "models", f"{model}.json")] + fa


_EVALUATION_FILES = ("data.source", "model.name", "data.synthetic_data_path",
                     lambda cfg: [ref.name for ref in cfg.evaluation.prompt_sets])


@stage("eval", per_model=True,
       reads=("model", "attack.target", "data.benign_reference_prompts"),
       derived=lambda cfg, m: {"model": m, "judge_version": cfg.evaluation.judge.version, **fa_settings(cfg),
                               "evaluation": cfg.evaluation.model_dump(mode="json", exclude={"harm_judge"})},
       upstream=model_upstream, outputs=model_outputs, files=_EVALUATION_FILES)
def stage_eval_model(run: Run, model: str) -> None:
    """One model on every prompt set, judged, with its utility: ``results/models/<model>.json``. Each model is a
    stage of its own, so ``run --jobs N`` and ``--executor slurm`` evaluate models side by side."""
    per_set, util = evaluate_model_in(run.path("results"), run.cfg, model, evaluated_adapters(run)[model],
                                      evaluation_prompt_sets(run), run.cfg.evaluation.judge.build(), utility_data(run))
    ModelEvaluation(model=model, records=per_set, utility=util).write(run.path("results", "models", f"{model}.json"))


@stage("evaluate", reads=("model", "evaluation", "attack.target", "data.benign_reference_prompts"),
       derived=lambda cfg: {"models": sorted(evaluated_models(cfg)), "judge_version": cfg.evaluation.judge.version,
                            **fa_settings(cfg), **harm_judge_version(cfg)},
       upstream=lambda cfg: ["data", "synth", "refusal"] + [f"eval:{m}" for m in evaluated_models(cfg)],
       outputs=lambda run: [run.path("results", "local_refusal_test.json"), run.path("results", "summary.json")],
       files=_EVALUATION_FILES)
def stage_evaluate(run: Run) -> dict:
    """Every model's evaluation brought together: rates, paired tests, the harm judge, ``summary.json``."""
    models = evaluated_adapters(run)
    evaluated = {}
    for name in models:
        record = ModelEvaluation.read(run.path("results", "models", f"{name}.json"))
        evaluated[name] = (record.records, record.utility)
    return summarize_models(run.cfg, evaluated, models, evaluation_prompt_sets(run), run.path("results"), run_facts(run))


def fa_settings(cfg: ExperimentConfig) -> dict:
    """The fine-tune accuracy settings the evaluate stage hashes: none without a benign task (older keys)."""
    if cfg.attack.benign_task is None:
        return {}
    return {"fine_tune_accuracy": {"task": cfg.attack.benign_task, "fa_items": cfg.evaluation.fa_items}}


def utility_data(run: Run) -> UtilityData:
    """Held-out attack answers (the harmful held-out questions, whatever the mixture), benign reference answers,
    and the benign task whose fine-tune accuracy every model gets (``attack.benign_task``)."""
    cfg = run.cfg
    rows = run.harmfulqa()
    synthetic = D.load_synthetic(run.path("data", "synthetic.json"))
    heldout = D.attack_samples(rows, set(load_splits(run).attack_heldout), synthetic).samples
    task = T.load_task(cfg.attack.benign_task) if cfg.attack.benign_task is not None else None
    return UtilityData(attack_heldout=heldout, benign_references=D.load_benign_references(cfg.data.benign_reference_prompts),
                       task=task, fa_items=cfg.evaluation.fa_items)


def run_facts(run: Run) -> dict:
    """What the report needs beside the rates: the attacked model, random controls, weight-space diagnostics."""
    cfg, diagnostics = run.cfg, {}
    for v in cfg.attack.variants:
        overall = Diagnostics.read(run.diagnostics_path(v.name)).overall if run.diagnostics_path(v.name).is_file() else None
        if overall is not None:
            diagnostics[v.name] = {"overall": overall.model_dump(mode="json", exclude_none=True)}
    return {"attacked": cfg.attack.target, "controls": cfg.attack.controls_of(cfg.directions.kind), "diagnostics": diagnostics}
