"""LoRA supervised fine-tuning on the HF Trainer: refusal training and attack training.

The Trainer owns the loop (AdamW, linear warm-up, accumulation, clipping at max_grad_norm, mixed precision).
What an attack mode adds comes as training hooks (``TrainingHook``, see ``orthoguard.modes``): orthogonal mode's
enforces the projection around each optimizer step (a callback), regularized mode's adds a penalty to the loss (a
Trainer subclass). ``projection=`` / ``regularizer=`` are shorthands for those two hooks.

Given a ``checkpoint_dir``, training saves a resumable checkpoint every ``save_steps`` optimizer steps (the
Trainer's adapter, optimizer, scheduler, RNG states and data position, plus our loss and probe records) and a
restarted call resumes from the newest complete one. Under ``accelerate launch`` / ``torchrun`` the Trainer runs
DDP: gradients are all-reduced before ``on_pre_optimizer_step``, so every rank projects the same synchronised
gradient; only the main process writes.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from datasets import Dataset
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from orthoguard import attention
from orthoguard.config import TrainConfig
from orthoguard.directions import canonical_name
from orthoguard.generation import GenerationSettings, generate
from orthoguard.io import read_json, write_json
from orthoguard.judges import judge_records
from orthoguard.models import Precision, lora_config
from orthoguard.projection import Projector, build_constraints
from orthoguard.regularization import RegularizerSpec, penalty_fn
from orthoguard.rundir import RateSummary, TrainLog

log = logging.getLogger(__name__)


class LossLog(TrainerCallback):
    """Collects one record per optimizer step in the seed's format (step, epoch, loss, learning_rate).

    ``learning_rate`` is the rate the optimizer step used (the Trainer's own log shows the scheduler's next one)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.pending: dict[str, float] = {}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self.pending["learning_rate"] = float(optimizer.param_groups[0]["lr"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            record = {
                "step": state.global_step,
                "epoch": round(float(state.epoch or 0.0), 4),
                "loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
            }
            if "grad_norm" in logs:
                record["grad_norm"] = float(logs["grad_norm"])
            record.update(self.pending)
            self.records.append(record)
            self.pending = {}


class Project(TrainerCallback):
    """Orthogonal mode: enforce the constraints around every optimizer step.

    The Trainer clips (after unscaling, under mixed precision) before ``on_pre_optimizer_step``, so the gradient
    projection sees the gradient that the optimizer will use; the update projection runs right after the step.
    """

    def __init__(self, projector: Projector, loss_log: LossLog) -> None:
        self.projector = projector
        self.loss_log = loss_log

    @property
    def records(self) -> dict[str, list[float]]:
        """The projector's per-tensor energy sums, saved in checkpoints so a resumed run keeps counting."""
        return self.projector.energy

    @records.setter
    def records(self, saved: dict[str, list[float]]) -> None:
        self.projector.energy.update({k: list(v) for k, v in saved.items()})

    def summary(self) -> dict[str, Any]:
        shares = self.projector.removed_energy_shares()
        shapes = {n: list(p.shape) for n, p in zip(self.projector.names, self.projector.params)}
        energy = {n: total for n, (_, total) in self.projector.energy.items()}
        return {"at": self.projector.at, "tensors": {n: {"shape": shapes[n], "removed_energy_share": shares[n], "energy": energy[n]}
                                                     for n in shares}}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.loss_log.pending.update(self.projector.before_step())

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.loss_log.pending.update(self.projector.after_step())


class RefusalProbe(TrainerCallback):
    """Refusal decay: the model in training answers a fixed probe set before training, every ``every`` optimizer
    steps, and at the end; each probe records the keyword judge's refusal rate with its interval.

    Before training a fresh LoRA (every ``lora_B`` zero) adds nothing, so step 0 is the model it was put on, the
    same for every attack on one target: with ``start_record`` (a file named by what step 0 depends on) the first
    attack probes it and the others read its record."""

    def __init__(self, tokenizer, prompts: list[str], every: int, judge, settings: GenerationSettings, seed: int = 0,
                 judge_cache: Path | None = None, judge_concurrency: int = 8, start_record: Path | None = None):
        self.tokenizer, self.prompts, self.every, self.judge, self.settings, self.seed = tokenizer, prompts, every, judge, settings, seed
        self.judge_cache, self.judge_concurrency, self.start_record = judge_cache, judge_concurrency, start_record
        self.records: list[dict[str, Any]] = []
        self.views: list[Callable[[], Any]] = []  # the training hooks' ``probed_as`` (train_lora sets them)

    def probe(self, model, step: int) -> None:
        """Answer the probe prompts with ``model`` as it is now (inside the hooks' views) and record step ``step``."""
        side, was_training = self.tokenizer.padding_side, model.training
        with contextlib.ExitStack() as views:
            for view in self.views:
                views.enter_context(view())
            responses = generate(model, self.tokenizer, self.prompts, self.settings, seed=self.seed, desc=f"probe@{step}")
        self.tokenizer.padding_side = side
        model.train(was_training)
        judged = judge_records([{"prompt": p, "response": r} for p, r in zip(self.prompts, responses)], self.judge,
                               self.judge_cache, self.judge_concurrency)
        verdicts = [row["refused"] for row in judged]
        rates = RateSummary.of(verdicts)
        # the per-prompt verdicts (in probe order) let the report bootstrap the decay curve over prompts
        self.records.append({"step": step, **rates.model_dump(mode="json", exclude={"rate"}), "refusal_rate": rates.rate,
                             "verdicts": verdicts})

    def probe_start(self, model) -> None:
        """Step 0, read from ``start_record`` when an earlier attack on the same model wrote it."""
        shared = self.start_record is not None and _lora_adds_nothing(model)
        if shared and self.start_record.is_file():
            self.records.append(read_json(self.start_record))
            return
        self.probe(model, 0)
        if shared:
            write_json(self.start_record, self.records[-1])

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.records:  # a resumed run has its earlier probes back already
            self.probe_start(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.probe(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.records or self.records[-1]["step"] != state.global_step:
            self.probe(model, state.global_step)


def _lora_adds_nothing(model) -> bool:
    """True when every LoRA module's B factor is zero (a fresh adapter), and there is at least one."""
    factors = [p for name, p in model.named_parameters() if "lora_B" in name]
    return bool(factors) and all(not p.any() for p in factors)


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors, by their saved names (``canonical_name``), as copies."""
    return {canonical_name(n): p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_lora_state(peft_model, tensors: dict[str, torch.Tensor]) -> None:
    """Put ``tensors`` (``lora_state``'s names) into the model's LoRA parameters; a missing or extra name is an error."""
    live = {canonical_name(n): p for n, p in peft_model.named_parameters() if p.requires_grad}
    if set(live) != set(tensors):
        raise ValueError(f"LoRA snapshot does not fit the model: {len(set(live) ^ set(tensors))} tensors differ")
    for name, p in live.items():
        p.copy_(tensors[name])


class LoraSnapshots(TrainerCallback):
    """The LoRA tensors at every refusal-probe step (``every``; 0 and the last step included; 0: the last only) saved as
    ``<folder>/step-<N>.safetensors``, each written whole or not at all: a post-hoc defence applied to this
    attack later (``defences.posthoc``) probes what it would have deployed at the same steps."""

    def __init__(self, folder: Path, every: int) -> None:
        self.folder, self.every = Path(folder), every

    def _save(self, model, step: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"step-{step}.safetensors"
        staged = target.with_name(f".{target.name}.tmp")
        save_file({k: v.contiguous() for k, v in lora_state(model).items()}, str(staged))
        staged.replace(target)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step == 0:
            shutil.rmtree(self.folder, ignore_errors=True)  # a fresh training: no snapshot of an earlier one survives
            if self.every:
                self._save(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.every and state.global_step % self.every == 0:
            self._save(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and not (self.folder / f"step-{state.global_step}.safetensors").is_file():
            self._save(model, state.global_step)


def snapshot_steps(folder: Path) -> list[tuple[int, Path]]:
    """(step, file) of the snapshots ``LoraSnapshots`` saved in ``folder``, in step order."""
    found = [(int(f.stem.split("-")[1]), f) for f in Path(folder).glob("step-*.safetensors") if f.stem.split("-")[1].isdigit()]
    return sorted(found)


CHECKPOINT_STATE = "orthoguard_state.json"


class CheckpointRecords(TrainerCallback):
    """Saves the records of our callbacks (losses, probes) into each checkpoint, last, so a checkpoint that has
    this file is complete; a resumed run puts the records back."""

    def __init__(self, holders: list[Any]) -> None:
        self.holders = holders

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_json(folder / CHECKPOINT_STATE, {"step": state.global_step, "records": [h.records for h in self.holders]})

    def restore(self, checkpoint: Path) -> None:
        saved = read_json(checkpoint / CHECKPOINT_STATE)["records"]
        for holder, records in zip(self.holders, saved, strict=True):
            holder.records = records


def _checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be trusted, or None."""
    for name in (CHECKPOINT_STATE, "trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            return f"{name} missing (interrupted while saving?)"
    try:
        read_json(folder / CHECKPOINT_STATE)
        read_json(folder / "trainer_state.json")
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception as exc:  # a truncated or corrupt file of any kind
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint under ``folder`` that was saved completely; damaged ones are reported and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in found:
        problem = _checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        log.warning("checkpoint %s not used: %s", checkpoint, problem)
    return None


@dataclass(frozen=True)
class ProjectionSpec:
    directions: dict
    family: str = "lora_factors"
    at: str = "update"


def warmup_linear_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warm-up then linear decay, with no zero-rate step: warm-up step s (0-based) gets (s + 1)/(warmup + 1)
    of the rate, so one warm-up step of ten trains at half the rate instead of at 0 (the Trainer's linear schedule
    starts at 0, silently dropping a step); the decay is the Trainer's and its last step is still above 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def label_positions_only(model, inputs: dict[str, Any]) -> dict[str, Any]:
    """The same batch, asking the model for logits only where the next token is a label.

    In supervised fine-tuning on completions most positions are the masked prompt, yet the LM head (for SmolLM2 a
    576 x 49,152 matmul, about a fifth of a token's FLOPs) and the fp32 logits tensor cover every position. Passing
    ``logits_to_keep`` (the positions whose next token is a label in some row) and the matching ``shift_labels``
    gives the model's own loss with the same value and gradients. Models whose forward takes no ``logits_to_keep``
    get the batch unchanged."""
    labels = inputs.get("labels")
    if labels is None or "shift_labels" in inputs or not _accepts_logits_to_keep(model):
        return inputs
    following = labels[:, 1:]
    keep = (following != -100).any(0).nonzero().squeeze(1)
    return {**inputs, "logits_to_keep": keep, "shift_labels": following[:, keep]}


def _accepts_logits_to_keep(model) -> bool:
    base = model
    while hasattr(base, "module") and not hasattr(base, "get_base_model"):  # DDP and similar wrappers
        base = base.module
    if hasattr(base, "get_base_model"):  # PEFT
        base = base.get_base_model()
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class OrthoguardTrainer(Trainer):
    """The HF Trainer with a warm-up that never produces a zero-learning-rate step, and an LM head that runs only
    on label positions (``label_positions_only``)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = label_positions_only(model, inputs) if model.training else inputs
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            from functools import partial

            from torch.optim.lr_scheduler import LambdaLR

            warmup = self.args.get_warmup_steps(num_training_steps)
            schedule = partial(warmup_linear_lambda, warmup=warmup, total=num_training_steps)
            self.lr_scheduler = LambdaLR(optimizer if optimizer is not None else self.optimizer, schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler


class RegularizedTrainer(OrthoguardTrainer):
    """Adds a penalty on the parameters to every micro-batch loss, scaled so that one optimizer step sees it once."""

    def __init__(self, *args, penalty, loss_log: LossLog, **kwargs):
        super().__init__(*args, **kwargs)
        self.penalty, self.loss_log = penalty, loss_log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        penalty = self.penalty()
        self.loss_log.pending["reg_penalty"] = float(penalty)
        # mirror Trainer.training_step: when the task loss is not already scaled for accumulation, it divides it
        scaled = self.loss_is_scaled_for_ga if getattr(self, "loss_is_scaled_for_ga", None) is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        if scaled:
            penalty = penalty / self.current_gradient_accumulation_steps
        if return_outputs:
            return result[0] + penalty, result[1]
        return result + penalty


class TrainingHook:
    """What an attack mode adds to one training run: callbacks (after the loss log, before the caller's), a Trainer
    class with its extra keyword arguments (at most one hook may choose the class), and fields of the loss log."""

    trainer_class: type[OrthoguardTrainer] | None = None

    def callbacks(self, peft_model, loss_log: LossLog) -> list[TrainerCallback]:
        return []

    def trainer_kwargs(self, peft_model, loss_log: LossLog) -> dict[str, Any]:
        return {}

    def log_fields(self) -> dict[str, Any]:
        return {}

    def probed_as(self):
        """A context manager in which the model is what this mode deploys at the current step (a post-hoc
        defence's projection applied); the refusal probes answer inside it. Default: the model as trained."""
        return contextlib.nullcontext()

    def finish(self) -> None:
        """What the mode does to the trained adapter before it is saved (a post-hoc defence's projection)."""


class ProjectionHook(TrainingHook):
    """Orthogonal mode: every optimizer step constrained away from ``spec``'s directions."""

    def __init__(self, spec: ProjectionSpec) -> None:
        self.spec, self.project = spec, None

    def callbacks(self, peft_model, loss_log):
        named = dict(peft_model.named_parameters())
        constraints = build_constraints(named, self.spec.directions, self.spec.family)
        names = {id(p): canonical_name(n) for n, p in named.items()}
        self.project = Project(Projector(constraints, self.spec.at, names), loss_log)
        return [self.project]

    def log_fields(self):
        return {"projection": {"family": self.spec.family, **self.project.summary()}} if self.project else {}


class PenaltyHook(TrainingHook):
    """Regularized mode: a penalty on movement along ``spec``'s directions, added to every loss."""

    trainer_class = RegularizedTrainer

    def __init__(self, spec: RegularizerSpec) -> None:
        self.spec = spec

    def trainer_kwargs(self, peft_model, loss_log):
        return {"penalty": penalty_fn(dict(peft_model.named_parameters()), self.spec), "loss_log": loss_log}


@dataclass
class TrainResult:
    adapter_dir: Path
    log_path: Path
    steps: int
    final_loss: float | None
    seconds: float


def _checkpointing_flag(enabled: bool) -> dict[str, bool]:
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing
    name = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"
    return {name: enabled}


def training_arguments(cfg: TrainConfig, output_dir: str, seed: int, precision: Precision,
                       checkpoints: bool = False) -> TrainingArguments:
    save = {"save_strategy": "steps", "save_steps": cfg.save_steps, "save_total_limit": 2} if checkpoints and cfg.save_steps \
        else {"save_strategy": "no"}
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type="linear",
        optim="adamw_torch",
        max_grad_norm=cfg.max_grad_norm,
        **_checkpointing_flag(cfg.gradient_checkpointing),
        logging_steps=1,
        **save,
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=precision.device == "cpu",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        **precision.trainer_flags,
    )


def training_collator(tokenizer, packed: bool):
    """Padded batches (right padding, labels padded with -100), or packed ones: one row, position ids restarting at
    every sample, the first label of each sample -100 so that no sample learns to predict the next one's start."""
    if packed:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def train_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    adapter_dir: str | Path,
    log_path: str | Path,
    mode: str,
    seed: int,
    precision: Precision,
    projection: ProjectionSpec | None = None,
    regularizer: RegularizerSpec | None = None,
    log_config: dict[str, Any] | None = None,
    callbacks: list[TrainerCallback] = (),
    hooks: list[TrainingHook] = (),
    checkpoint_dir: str | Path | None = None,
    init_seed: int | None = None,
) -> TrainResult:
    """Wrap ``model`` in a fresh LoRA, train it on ``dataset`` and save the adapter and the loss log.

    ``hooks`` are what the attack mode adds (``TrainingHook``); ``projection`` (every optimizer step constrained
    away from the refusal directions) and ``regularizer`` (a penalty) add the orthogonal and regularized hooks. With
    ``checkpoint_dir`` a killed call, made again, resumes from its newest complete checkpoint; the folder is
    removed once the adapter is saved. ``init_seed`` (default ``seed``) seeds the LoRA initialisation alone;
    ``seed`` seeds the data order and dropout.
    """
    from peft import get_peft_model

    if len(dataset) == 0:
        raise ValueError(f"{mode}: the training set is empty")
    init_seed = seed if init_seed is None else init_seed
    set_seed(init_seed)  # the LoRA initialisation, which the update projection and the regularizer take as their origin
    peft_model = get_peft_model(model, lora_config(cfg.lora))
    if cfg.gradient_checkpointing:
        peft_model.enable_input_require_grads()
    tokenizer.padding_side = "right"
    loss_log = LossLog()
    hooks = list(hooks) + ([ProjectionHook(projection)] if projection is not None else []) \
        + ([PenaltyHook(regularizer)] if regularizer is not None else [])
    trainer_classes = {h.trainer_class for h in hooks if h.trainer_class is not None}
    if len(trainer_classes) > 1:
        raise ValueError(f"{mode}: training hooks ask for different Trainer classes: {sorted(c.__name__ for c in trainer_classes)}")
    trainer_class = trainer_classes.pop() if trainer_classes else OrthoguardTrainer
    all_callbacks: list[TrainerCallback] = [loss_log]
    for hook in hooks:
        all_callbacks.extend(hook.callbacks(peft_model, loss_log))
    all_callbacks.extend(callbacks)  # after the projection, so they see the gradients that are applied
    for probe in (cb for cb in callbacks if isinstance(cb, RefusalProbe)):
        probe.views = [hook.probed_as for hook in hooks]
    records = CheckpointRecords([cb for cb in all_callbacks if hasattr(cb, "records")])
    all_callbacks.append(records)

    kernel = attention.resolve(cfg.attention, precision.device, precision.autocast)
    packed = attention.resolve_packing(cfg.packing, precision.device)
    adapter_dir, log_path = Path(adapter_dir), Path(log_path)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}-", dir=adapter_dir.parent))
    trainer_dir = Path(checkpoint_dir) if checkpoint_dir is not None else work / "trainer"
    resume = last_complete_checkpoint(trainer_dir) if checkpoint_dir is not None else None
    if resume is not None:
        records.restore(resume)
        log.info("%s: resuming from %s", mode, resume)
    try:
        extra: dict[str, Any] = {}
        for hook in hooks:
            extra.update(hook.trainer_kwargs(peft_model, loss_log))
        trainer = trainer_class(
            **extra,
            model=peft_model,
            args=training_arguments(cfg, str(trainer_dir), seed, precision, checkpoints=checkpoint_dir is not None),
            train_dataset=dataset,
            data_collator=training_collator(tokenizer, packed),
            callbacks=all_callbacks,
        )
        start = time.perf_counter()
        with attention.training_attention(peft_model, kernel, packed) as trained_with:
            trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        seconds = time.perf_counter() - start
        main_process = trainer.is_world_process_zero()
        if main_process:
            staged = work / "adapter"
            peft_model.save_pretrained(str(staged), safe_serialization=True)
            if adapter_dir.exists():
                shutil.rmtree(adapter_dir)
            staged.rename(adapter_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if main_process:
        record = {
            "mode": mode,
            "config": log_config if log_config is not None else cfg.model_dump(mode="json"),
            "train_samples": len(dataset),
            "seconds": round(seconds, 2),
            "init_seed": init_seed,
            "resumed_from_step": int(resume.name.split("-")[-1]) if resume is not None else None,
            "world_size": trainer.args.world_size,
            "attention": trained_with,
            "packed": packed,
            "losses": loss_log.records,
        }
        for probe in (cb for cb in callbacks if isinstance(cb, RefusalProbe)):
            record["probes"] = probe.records
        for hook in hooks:
            record.update(hook.log_fields())
        TrainLog.parse(record, log_path).write(log_path)
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    final = loss_log.records[-1]["loss"] if loss_log.records else None
    return TrainResult(adapter_dir, log_path, trainer.state.global_step, final, seconds)
