"""The experiment as a list of stages over one run directory.

    data -> synth -> benign -> refusal -> directions [-> blue, red, blue-red] -> attack:<variant>... -> evaluate

Each stage writes its outputs under ``<output_dir>`` and records in ``stages.json`` a hash of the config sections
it reads (chained through the stages it reads from) and sha256 fingerprints of its input files and of the outputs
it wrote. A stage is skipped only when all three still match: a changed config, a changed input (a replaced
adapter, an edited data file, another local model) or an output edited or damaged since it was written makes
the stage, and the stages that read it, run again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from orthoguard import data as D
from orthoguard import distributed
from orthoguard.config import AttackVariant, ExperimentConfig, dump_config
from orthoguard.diagnostics import weight_diagnostics
from orthoguard.directions import compute_directions, load_directions, module_factors, random_like, save_directions
from orthoguard.errors import DataError, OrthoguardError
from orthoguard.generation import GenerationSettings, generate
from orthoguard.io import fingerprint, read_json, read_jsonl, write_json, write_jsonl, write_text
from orthoguard.evaluation import PromptSet, UtilityData, evaluate_models
from orthoguard.families import get_family
from orthoguard.families.matched import matched_random_subspaces
from orthoguard.judges import get_judge
from orthoguard.prompts import load_prompt_set, prompt_set_name
from orthoguard.models import load_with_adapters, resolve_precision
from orthoguard.regularization import RegularizerSpec, blue_red_directions
from orthoguard.seeding import derive_seed, lora_init_seed
from orthoguard.training import ProjectionSpec, RefusalProbe, train_lora

log = logging.getLogger(__name__)

HARMFUL_SET = "harmfulqa-test"
BENIGN_SET = "harmless-val"


class Run:
    """Paths of one run directory, and the stage bookkeeping."""

    def __init__(self, cfg: ExperimentConfig, output_dir: str | Path | None = None, paths: dict[str, str | Path] | None = None):
        self.cfg = cfg
        self.root = Path(output_dir or cfg.output_dir)
        # explicit locations for single-step commands that follow the seed's layout ("adapter:<name>", "directions")
        self.paths = {k: Path(v) for k, v in (paths or {}).items()}
        self.stages_path = self.root / "stages.json"
        self.stages: dict[str, Any] = read_json(self.stages_path) if self.stages_path.is_file() else {}
        self._keys: dict[str, str] = {}
        self.running: tuple[str, str] | None = None  # (stage, key) of the stage in progress

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def adapter(self, name: str) -> Path:
        return self.paths.get(f"adapter:{name}", self.path("adapters", name))

    def log_path(self, mode: str) -> Path:
        return self.path("logs", f"training_loss_{mode}.json")

    def directions_path(self, key: str) -> Path:
        """The direction file of a family ("subspace") or of its random control ("random-subspace")."""
        return self.paths.get("directions", self.path("directions", f"refusal.{key}.safetensors"))

    def checkpoint_dir(self) -> Path:
        """Where the stage in progress keeps its training checkpoints: ``<stage>-<key>``, so a changed config or
        input never resumes from a checkpoint of another one."""
        if self.running is None:
            raise RuntimeError("checkpoint_dir() outside a stage")
        name, key = self.running
        return self.path("checkpoints", f"{name.replace(':', '-')}-{key}")

    def _drop_stale_checkpoints(self) -> None:
        """Checkpoints of the running stage under an older key can never be resumed."""
        current = self.checkpoint_dir()
        stage = current.name.rsplit("-", 1)[0]
        for folder in current.parent.glob(f"{stage}-*"):
            if folder != current and folder.name.rsplit("-", 1)[0] == stage:
                shutil.rmtree(folder, ignore_errors=True)

    def direction_keys(self) -> list[str]:
        default = self.cfg.directions.kind
        keys = {v.directions_key(default) for v in self.cfg.attack.variants if v.mode == "orthogonal" and v.random != "matched"}
        return sorted(keys) or [default]

    def stage(self, name: str, payload: Any, upstream: list[str], outputs: list[Path], fn: Callable[[], Any],
              force: bool = False, enabled: bool = True, inputs: list[Path] = ()):
        """Run ``fn`` unless it ran before with the same config and the same input files, and its outputs are
        still the files it wrote; then record the config hash and the inputs' and outputs' fingerprints.

        The config hash covers the stage's config sections and those of the stages it reads from; ``inputs``
        are files it reads (upstream outputs, a local model or data file). A stage that is not ``enabled`` only
        computes its config hash, so that the stages after it can chain on it.
        """
        blob = json.dumps({"seed": self.cfg.seed, "payload": payload, "upstream": [self._keys[u] for u in upstream]},
                          sort_keys=True, default=str)
        config_hash = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self._keys[name] = config_hash
        if not enabled:
            return "not selected"
        input_prints = {self._label(p): fingerprint(p) for p in dict.fromkeys(inputs)} if distributed.is_main() else {}
        key = hashlib.sha256(json.dumps([config_hash, input_prints], sort_keys=True).encode()).hexdigest()[:16]
        reason = "forced" if force else self._why_redo(self.stages.get(name), config_hash, input_prints,
                                                        {self._label(p): p for p in outputs})
        key, reason = distributed.broadcast((key, reason))  # every rank follows rank 0's decision
        if reason is None:
            log.info("stage %-20s up to date, skipped", name)
            return "skipped"
        log.info("stage %-20s running (%s)", name, reason)
        start = time.perf_counter()
        self.running = (name, key)
        if distributed.is_main():
            self._drop_stale_checkpoints()
        _run_on_ranks(fn, every_rank=name.split(":")[0] in TRAINING_STAGES)
        self.running = None
        if distributed.is_main():
            self.stages[name] = {
                "key": key,
                "config": config_hash,
                "inputs": input_prints,
                "outputs": {self._label(p): fingerprint(p) for p in outputs},
                "seconds": round(time.perf_counter() - start, 1),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            write_json(self.stages_path, self.stages)
        return "ran"

    def _label(self, path: Path) -> str:
        """How stages.json names a file: relative to the run directory when inside it, so a moved or copied run
        directory stays up to date."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(Path(path).resolve())

    @staticmethod
    def _why_redo(done: dict | None, config_hash: str, input_prints: dict[str, str], outputs: dict[str, Path]) -> str | None:
        if not done:
            return "never ran"
        if done.get("config") != config_hash:
            return "config changed"
        changed = [p for p, fp in input_prints.items() if done.get("inputs", {}).get(p) != fp]
        if changed:
            return f"input changed: {changed[0]}" + (f" and {len(changed) - 1} more" if len(changed) > 1 else "")
        written = done.get("outputs", {})
        for label, path in outputs.items():
            if not path.exists():
                return f"output missing: {path}"
            if written.get(label) != fingerprint(path):
                log.warning("%s is not the file its stage wrote (edited, truncated or damaged): not trusted", path)
                return f"output changed since written: {path}"
        return None


# stages that train: under a multi-process launcher every rank runs them (DDP); the others run on rank 0 only
TRAINING_STAGES = {"refusal", "blue", "red", "attack"}


def _run_on_ranks(fn: Callable[[], Any], every_rank: bool) -> None:
    """Run a stage body on every rank, or on rank 0 while the others wait for its files; a failure on rank 0
    stops the others too, with its message. (When a rank fails in a training stage, the launcher stops the rest.)"""
    if every_rank or not distributed.active():
        fn()
        return
    failure = None
    if distributed.is_main():
        try:
            fn()
        except Exception as exc:  # re-raised below, after the other ranks have been told
            failure = exc
    message = distributed.broadcast(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise OrthoguardError(f"rank 0 failed: {message}")


# --------------------------------------------------------------------------------------------------------
# Stage bodies


def _model_payload(cfg: ExperimentConfig) -> dict:
    return cfg.model.model_dump(mode="json")


def stage_data(run: Run) -> None:
    cfg = run.cfg
    rows = D.load_harmfulqa(cfg.data.source, cfg.data.hub_split)
    splits = D.split_questions(
        [r.question for r in rows],
        {"refusal": cfg.data.refusal_split, "attack": cfg.data.attack_split, "test": cfg.data.test_split},
        seed=cfg.seed,
        shuffle=cfg.data.shuffle,
    )
    splits["test"], splits["probe"] = hold_out_probes(splits["test"], probe_count(cfg), cfg.data.test_split)
    caps = {"refusal": cfg.data.max_refusal_questions, "attack": cfg.data.max_attack_questions,
            "test": cfg.data.max_test_prompts, "probe": None}
    splits = {name: qs[: caps[name]] if caps[name] else qs for name, qs in splits.items()}
    # a few attack questions are never trained on: the attack's held-out loss
    held = min(cfg.data.attack_heldout_questions, max(len(splits["attack"]) - 1, 0))
    splits["attack"], splits["attack_heldout"] = splits["attack"][: len(splits["attack"]) - held], splits["attack"][len(splits["attack"]) - held :]
    D.check_disjoint(**splits)
    harmless_train, harmless_eval = D.load_harmless("train"), D.load_harmless("val")
    rng = random.Random(cfg.seed)
    benign = {
        "train": rng.sample(harmless_train, min(cfg.data.benign_train_prompts, len(harmless_train))),
        "eval": rng.sample(harmless_eval, min(cfg.data.benign_eval_prompts, len(harmless_eval))),
    }
    write_json(run.path("data", "splits.json"), {**splits, "benign_train": benign["train"], "benign_eval": benign["eval"],
                                                   "source": cfg.data.source, "seed": cfg.seed})


def probe_count(cfg: ExperimentConfig) -> int:
    return cfg.attack.probe_prompts if cfg.attack.probe_every else 0


def hold_out_probes(test_slice: list[str], count: int, spec: str) -> tuple[list[str], list[str]]:
    """The refusal-decay probe questions: the last ``count`` questions of the test slice, never tested on, so the
    decay curve and the final rates are measured on different questions."""
    if count and len(test_slice) <= count:
        raise DataError(f"data.test_split '{spec}' has {len(test_slice)} questions: too few to hold "
                        f"attack.probe_prompts = {count} probe questions apart and still test")
    return test_slice[: len(test_slice) - count], test_slice[len(test_slice) - count :]


def load_splits(run: Run) -> dict[str, list[str]]:
    return read_json(run.path("data", "splits.json"))


def has_regularized(cfg: ExperimentConfig) -> bool:
    return any(v.mode == "regularized" for v in cfg.attack.variants)


def synth_questions(run: Run) -> list[str]:
    """Questions that need a generated compliant answer: the attack split, and the refusal split when a
    regularized variant needs a red LoRA; only where the data has no red conversations for them."""
    if not run.cfg.synth.enabled:
        return []
    rows = D.load_harmfulqa(run.cfg.data.source, run.cfg.data.hub_split)
    splits = load_splits(run)
    wanted = ["attack", "attack_heldout"] + (["refusal"] if has_regularized(run.cfg) else [])
    questions = []
    for name in wanted:
        split = set(splits[name])
        if not any(r.red for r in rows if r.question in split):
            limit = run.cfg.synth.max_prompts
            questions += splits[name][:limit] if limit else splits[name]
    return questions


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
    return [{"question": q, "harmful_answer": a, "source": model_cfg.name} for q, a in zip(questions, answers) if a.strip()]


def stage_benign(run: Run) -> None:
    """Ordinary answers to harmless instructions, from the base model, mixed into refusal training."""
    cfg = run.cfg
    prompts = load_splits(run)["benign_train"]
    answers: list[str] = []
    if prompts:
        model, tokenizer, _ = load_with_adapters(cfg.model)
        settings = GenerationSettings(max_new_tokens=cfg.data.benign_max_new_tokens, batch_size=cfg.synth.batch_size)
        answers = generate(model, tokenizer, prompts, settings, seed=cfg.seed, desc="benign")
    write_jsonl(run.path("data", "benign.jsonl"), [{"prompt": p, "response": a} for p, a in zip(prompts, answers) if a.strip()])


def _samples_to_records(samples) -> list[dict]:
    return [{"question": s.question, "source": s.source, "messages": list(s.messages)} for s in samples]


def _train_stage(run: Run, samples, train_cfg, adapter: Path, mode: str, adapters_below: list[Path], init_role: str,
                 projection=None, regularizer=None, log_config=None, probe: bool = False):
    cfg = run.cfg
    model, tokenizer, precision = load_with_adapters(cfg.model, adapters_below)
    callbacks = []
    if probe and cfg.attack.probe_every:
        prompts = load_splits(run)["probe"]
        settings = GenerationSettings(cfg.attack.probe_max_new_tokens, cfg.evaluation.batch_size)
        callbacks.append(RefusalProbe(tokenizer, prompts, cfg.attack.probe_every, get_judge(cfg.evaluation.judge), settings, cfg.seed))
    dataset, dropped = D.build_sft_dataset(tokenizer, samples, train_cfg.max_length)
    if dropped:
        log.warning("%s: %d samples dropped (prompt longer than max_length %d)", mode, dropped, train_cfg.max_length)
    result = train_lora(
        model, tokenizer, dataset, train_cfg, adapter_dir=adapter, log_path=run.log_path(mode), mode=mode,
        seed=cfg.seed, precision=precision, projection=projection, regularizer=regularizer, log_config=log_config,
        callbacks=callbacks, checkpoint_dir=run.checkpoint_dir(), init_seed=lora_init_seed(cfg.seed, init_role),
    )
    del model
    gc.collect()
    return result


def stage_refusal(run: Run) -> None:
    cfg = run.cfg
    rows = D.load_harmfulqa(cfg.data.source, cfg.data.hub_split)
    splits = load_splits(run)
    benign = [D.single_turn(r["prompt"], r["response"], "benign") for r in read_jsonl(run.path("data", "benign.jsonl"))]
    samples = D.refusal_samples(rows, set(splits["refusal"]), random.Random(cfg.seed), benign=benign)
    if distributed.is_main():
        write_jsonl(run.path("data", "refusal.jsonl"), _samples_to_records(samples))
    _train_stage(run, samples, cfg.refusal, run.adapter("refusal"), "refusal", [], "refusal",
                 log_config={"model": _model_payload(cfg), "data": cfg.data.model_dump(mode="json"), **cfg.refusal.model_dump(mode="json")})


def stage_blue_red(run: Run, color: str) -> None:
    """Regularized mode: a blue (refusing) or red (complying) LoRA on the refusal-split questions."""
    cfg = run.cfg
    rows = D.load_harmfulqa(cfg.data.source, cfg.data.hub_split)
    questions = set(load_splits(run)["refusal"])
    if color == "blue":
        samples = D.refusal_samples(rows, questions, random.Random(cfg.seed))
    else:
        samples = D.attack_samples(rows, questions, D.load_synthetic(run.path("data", "synthetic.json"))).samples
    if not samples:
        raise DataError(f"no {color} samples for the refusal-split questions (enable synth)")
    _train_stage(run, samples, cfg.refusal, run.adapter(color), color, attacked_adapters(run), color,
                 log_config={"color": color, **cfg.refusal.model_dump(mode="json")})


def stage_blue_red_directions(run: Run) -> None:
    for family in blue_red_families(run.cfg):
        directions = blue_red_directions(run.adapter("blue"), run.adapter("red"), family)
        save_directions(run.directions_path(f"blue-red.{family}"), directions, {"family": family, "kind": "blue-red"})


def blue_red_families(cfg: ExperimentConfig) -> list[str]:
    return sorted({v.family(cfg.directions.kind) for v in cfg.attack.variants if v.mode == "regularized"})


def stage_directions(run: Run) -> None:
    """Every direction file the orthogonal variants need: families and their random controls."""
    cfg = run.cfg
    for key in run.direction_keys():
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


def attack_samples(run: Run) -> list:
    cfg = run.cfg
    rows = D.load_harmfulqa(cfg.data.source, cfg.data.hub_split)
    synthetic = D.load_synthetic(run.path("data", "synthetic.json"))
    if cfg.data.synthetic_data_path:
        synthetic += D.load_synthetic(cfg.data.synthetic_data_path)
    attack = D.attack_samples(rows, set(load_splits(run)["attack"]), synthetic)
    if attack.unanswered_questions:
        log.info("%d attack questions have no compliant answer and are not trained on", len(attack.unanswered_questions))
    samples = attack.samples
    if not samples:
        raise DataError("no attack samples: the attack questions have no red conversations and no synthetic answers "
                        "(enable synth or set data.synthetic_data_path)")
    return samples


def attacked_adapters(run: Run) -> list[Path]:
    """The adapters merged into the model that the attack fine-tunes."""
    return [run.adapter("refusal")] if run.cfg.attack.target == "aligned" else []


def stage_attack(run: Run, variant: AttackVariant) -> None:
    cfg = run.cfg
    samples = attack_samples(run)
    if distributed.is_main():
        write_jsonl(run.path("data", "attack.jsonl"), _samples_to_records(samples))
    train_cfg = cfg.attack.training_for(variant)
    projection = regularizer = None
    if variant.random == "matched":
        projection = ProjectionSpec(matched_control_directions(run, variant), "matched", variant.at)
    elif variant.mode == "orthogonal":
        directions, meta = load_directions(run.directions_path(variant.directions_key(cfg.directions.kind)))
        projection = ProjectionSpec(directions, meta.get("family", variant.family(cfg.directions.kind)), variant.at)
    elif variant.mode == "regularized":
        family = variant.family(cfg.directions.kind)
        directions, _ = load_directions(run.directions_path(f"blue-red.{family}"))
        regularizer = RegularizerSpec(directions, family, variant.reg_lambda, train_cfg.lora.alpha / train_cfg.lora.r)
    log_config = {"variant": variant.model_dump(mode="json"), "target": cfg.attack.target, **train_cfg.model_dump(mode="json")}
    adapter = run.adapter(f"attack-{variant.name}")
    _train_stage(run, samples, train_cfg, adapter, variant.name, attacked_adapters(run), "attack", projection=projection,
                 regularizer=regularizer, log_config=log_config, probe=True)
    if run.adapter("refusal").is_dir() and distributed.is_main():
        log_path = run.log_path(variant.name)
        record = read_json(log_path)
        d = cfg.directions
        record["diagnostics"] = weight_diagnostics(adapter, run.adapter("refusal"), d.subspace_k, d.subspace_energy)
        write_json(log_path, record)


def defence_of(cfg: ExperimentConfig, control: AttackVariant) -> AttackVariant:
    defence = cfg.attack.defence_of(control, cfg.directions.kind)
    if defence is None:  # the config validator makes this unreachable for matched controls
        raise DataError(f"variant '{control.name}': no defence to control")
    return defence


def matched_control_directions(run: Run, control: AttackVariant) -> dict:
    """Random subspaces sized from what the defence's projection removed in its own training (its log), saved as
    ``directions/refusal.matched-<control>.safetensors``."""
    defence = defence_of(run.cfg, control)
    measured = (read_json(run.log_path(defence.name)).get("projection") or {}).get("tensors")
    if not measured:
        raise DataError(f"{run.log_path(defence.name)}: no per-tensor projection shares to size the matched control "
                        f"'{control.name}' from (rerun the '{defence.name}' attack)")
    directions = matched_random_subspaces(measured, seed=derive_seed(run.cfg.seed, f"matched:{control.name}"),
                                          target_share=mean_removed_share(read_json(run.log_path(defence.name))))
    if distributed.is_main():
        save_directions(run.directions_path(control.directions_key(run.cfg.directions.kind)), directions,
                        {"family": "matched", "controls": defence.name, "base_model": run.cfg.model.name})
    return directions


def mean_removed_share(log: dict) -> float | None:
    """The mean over optimizer steps of the share of the gradient or update norm that the projection removed."""
    shares = [x[k] for x in log.get("losses") or [] for k in ("grad_removed_frac", "update_removed_frac") if k in x]
    return sum(shares) / len(shares) if shares else None


def evaluated_models(run: Run) -> dict[str, list[Path]]:
    """Model name -> adapters merged into the base model, in order."""
    models: dict[str, list[Path]] = {"base": [], "aligned": [run.adapter("refusal")]}
    for variant in run.cfg.attack.variants:
        models[variant.name] = attacked_adapters(run) + [run.adapter(f"attack-{variant.name}")]
    return models


def stage_evaluate(run: Run) -> dict:
    cfg = run.cfg
    splits = load_splits(run)
    prompt_sets = [PromptSet(HARMFUL_SET, splits["test"], harmful=True), PromptSet(BENIGN_SET, splits["benign_eval"], harmful=False)]
    for ref in cfg.evaluation.prompt_sets:
        recs = load_prompt_set(ref.name, limit=ref.limit, seed=cfg.seed)
        prompt_sets.append(PromptSet(prompt_set_name(ref.name), [r.prompt for r in recs], harmful=recs[0].harmful if recs else True,
                                     ids=[str(r.id) for r in recs], categories=[r.category for r in recs]))
    return evaluate_models(cfg, evaluated_models(run), prompt_sets, run.path("results"), utility_data(run), run_facts(run))


def utility_data(run: Run) -> UtilityData:
    cfg = run.cfg
    rows = D.load_harmfulqa(cfg.data.source, cfg.data.hub_split)
    synthetic = D.load_synthetic(run.path("data", "synthetic.json"))
    heldout = D.attack_samples(rows, set(load_splits(run)["attack_heldout"]), synthetic).samples
    return UtilityData(attack_heldout=heldout, benign_references=D.load_benign_references(cfg.data.benign_reference_prompts))


def run_facts(run: Run) -> dict:
    """What the report needs beside the rates: the attacked model, random controls, weight-space diagnostics."""
    cfg = run.cfg
    controls = cfg.attack.controls_of(cfg.directions.kind)
    diagnostics = {}
    for v in cfg.attack.variants:
        path = run.log_path(v.name)
        if path.is_file() and "diagnostics" in (log := read_json(path)):
            diagnostics[v.name] = {"overall": log["diagnostics"]["overall"]}
    return {"attacked": cfg.attack.target, "controls": controls, "diagnostics": diagnostics}


# --------------------------------------------------------------------------------------------------------
# The whole run


def run_seeds(cfg: ExperimentConfig, seeds: list[int], output_dir: str | Path | None = None, force: bool = False) -> Path:
    """One full run per seed under ``<output_dir>/seed-<s>/``, and ``seeds.json`` listing them."""
    root = Path(output_dir or cfg.output_dir)
    for seed in seeds:
        run_pipeline(cfg.model_copy(update={"seed": seed}), root / f"seed-{seed}", force=force)
    if distributed.is_main():
        write_json(root / "seeds.json", {"seeds": seeds, "runs": {str(s): f"seed-{s}" for s in seeds}})
    return root


def run_pipeline(
    cfg: ExperimentConfig,
    output_dir: str | Path | None = None,
    force: bool = False,
    only: set[str] | None = None,
    paths: dict[str, str | Path] | None = None,
) -> Run:
    """Run every stage in order (or only those named in ``only``: "data", "attack:vanilla", "attack", …)."""
    distributed.init(cpu=resolve_precision(cfg.model.dtype).device == "cpu")
    run = Run(cfg, output_dir, paths)
    run.root.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        write_text(run.path("config.resolved.yaml"), dump_config(cfg))
    model = _model_payload(cfg)
    data_payload = {**cfg.data.model_dump(mode="json", exclude={"synthetic_data_path", "benign_max_new_tokens"}),
                    "probe_questions": probe_count(cfg)}
    steps: list[tuple] = [
        ("data", data_payload, [], [run.path("data", "splits.json")], lambda: stage_data(run)),
        ("synth", {"model": model, "synth": cfg.synth.model_dump(mode="json"), "regularized": has_regularized(cfg)}, ["data"],
         [run.path("data", "synthetic.json")], lambda: stage_synth(run)),
        ("benign", {"model": model, "tokens": cfg.data.benign_max_new_tokens, "batch": cfg.synth.batch_size}, ["data"],
         [run.path("data", "benign.jsonl")], lambda: stage_benign(run)),
        ("refusal", {"model": model, "train": cfg.refusal.model_dump(mode="json")}, ["data", "benign"],
         [run.adapter("refusal"), run.log_path("refusal")], lambda: stage_refusal(run)),
        ("directions", {"settings": cfg.directions.model_dump(mode="json"), "keys": run.direction_keys(), "model": model,
                        "target": cfg.attack.target}, ["refusal"],
         [run.directions_path(k) for k in run.direction_keys()], lambda: stage_directions(run)),
    ]
    if has_regularized(cfg):
        for color in ("blue", "red"):
            steps.append((color, {"model": model, "target": cfg.attack.target, "train": cfg.refusal.model_dump(mode="json")},
                          ["data", "synth", "refusal"], [run.adapter(color), run.log_path(color)],
                          lambda c=color: stage_blue_red(run, c)))
        steps.append(("blue-red", blue_red_families(cfg), ["blue", "red"],
                      [run.directions_path(f"blue-red.{f}") for f in blue_red_families(cfg)],
                      lambda: stage_blue_red_directions(run)))
    # a matched control is sized from its defence's training, so it trains after every other variant
    for variant in sorted(cfg.attack.variants, key=lambda v: v.random == "matched"):
        payload = {"model": model, "target": cfg.attack.target, "variant": variant.model_dump(mode="json"),
                   "probe": [cfg.attack.probe_every, cfg.attack.probe_prompts, cfg.attack.probe_max_new_tokens],
                   "train": cfg.attack.training_for(variant).model_dump(mode="json"),
                   "synthetic_data_path": cfg.data.synthetic_data_path}
        upstream = ["data", "synth", "refusal", "directions"] + (["blue-red"] if variant.mode == "regularized" else [])
        outputs = [run.adapter(f"attack-{variant.name}"), run.log_path(variant.name)]
        if variant.random == "matched":  # sized from its defence's training log
            upstream.append(f"attack:{defence_of(cfg, variant).name}")
            outputs.append(run.directions_path(variant.directions_key(cfg.directions.kind)))
        steps.append((f"attack:{variant.name}", payload, upstream, outputs, lambda v=variant: stage_attack(run, v)))
    eval_payload = {"evaluation": cfg.evaluation.model_dump(mode="json"), "models": sorted(evaluated_models(run))}
    steps.append(("evaluate", eval_payload, ["data", "synth", "refusal"] + [f"attack:{v.name}" for v in cfg.attack.variants],
                  [run.path("results", "local_refusal_test.json"), run.path("results", "summary.json")],
                  lambda: stage_evaluate(run)))

    from tqdm.auto import tqdm

    produced = {name: outputs for name, _, _, outputs, _ in steps}
    for name, payload, upstream, outputs, fn in tqdm(steps, desc=f"orthoguard run {cfg.name}", unit="stage"):
        enabled = only is None or name in only or name.split(":")[0] in only
        inputs = [p for u in upstream for p in produced[u]] + external_inputs(cfg, name)
        run.stage(name, payload, upstream, outputs, fn, force=force, enabled=enabled, inputs=inputs)
    return run


def external_inputs(cfg: ExperimentConfig, stage: str) -> list[Path]:
    """Files outside the run directory that a stage reads: a local model folder, a local data file, user prompt
    files. Hub ids and the embedded model are identified by name in the config hash instead."""
    def local(name: str | None) -> list[Path]:
        return [Path(name)] if name and Path(name).exists() else []

    model = local(cfg.model.name)
    data = local(cfg.data.source)
    kind = stage.split(":")[0]
    if kind == "data":
        return data
    if kind == "synth":
        return data + (local(cfg.synth.model) if cfg.synth.model else model)
    if kind in {"benign", "directions"}:
        return model
    if kind in {"refusal", "blue", "red"}:
        return data + model
    if kind == "attack":
        return data + model + local(cfg.data.synthetic_data_path)
    if kind == "evaluate":
        return data + model + local(cfg.data.synthetic_data_path) + [p for ref in cfg.evaluation.prompt_sets for p in local(ref.name)]
    return []

