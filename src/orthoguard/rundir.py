"""The run directory's JSON files as typed models: one model, one reader and one writer per file.

Every stage writes through these models and the report, the hub and the pipeline read through them, so a
field has one name and one type everywhere (unknown fields are rejected). Older run directories are read with
their older field names mapped (``errors`` for ``no_verdict``, the two older McNemar row shapes).

    data/splits.json                 Splits
    data/attack_mixture.<v>.json     AttackMixture
    stages.json                      StageRecords (name -> StageRecord)
    seeds.json                       SeedsIndex
    logs/training_loss_<name>.json   TrainLog
    logs/diagnostics_<variant>.json  Diagnostics
    results/summary.json             Summary (RateSummary, McNemarRow, Utility inside)

``read(path)`` raises a one-line ``DataError`` naming the file and the field; ``salvage(path, notes)`` (for the
report) drops the fields and entries that do not validate, with a note for each, and keeps the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, computed_field, model_validator

from orthoguard.errors import DataError
from orthoguard.io import read_json, write_json
from orthoguard.metrics import rate_summary, wilson_interval

M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _one_line(path: Path, exc: ValidationError) -> str:
    first = exc.errors()[0]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {_where(first['loc'])}: {first['msg']}{more}"


class _FileIO:
    """Reading and writing one JSON file of the run directory through its model."""

    @classmethod
    def parse(cls: type[M], data: Any, path: str | Path = "<data>") -> M:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DataError(_one_line(Path(path), exc)) from None

    @classmethod
    def read(cls: type[M], path: str | Path) -> M:
        return cls.parse(read_json(path), path)

    @classmethod
    def salvage(cls: type[M], path: str | Path, notes: list[str]) -> M | None:
        """The file with what does not validate left out (a note per piece); None when it is absent, is not
        JSON, or misses what the model cannot do without."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            data = read_json(path)
        except DataError as exc:
            notes.append(f"skipped an unreadable file: {exc}")
            return None
        while True:
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                if not isinstance(data, dict) or not _drop(data, exc.errors()[0], path, notes, cls):
                    notes.append(f"skipped an unreadable file: {_one_line(path, exc)}")
                    return None

    def write(self, path: str | Path) -> None:
        write_json(path, self.model_dump(mode="json", exclude_none=True))


class RunFile(_FileIO, BaseModel):
    """A JSON object file of the run directory: validated on read, written atomically, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid")


def _drop(data: dict, error: dict, path: Path, notes: list[str], cls: type[BaseModel]) -> bool:
    """Remove the piece of ``data`` that ``error`` is about, with a note: the list item or mapping entry it sits
    in (at most three levels down), or an optional top-level field. False when there is nothing it may remove."""
    loc = list(error["loc"])
    chain: list[Any] = [data]  # chain[d]: the container that holds loc[d]
    for part in loc[: min(2, len(loc) - 1)]:
        child = chain[-1][part] if _has(chain[-1], part) else None
        if not isinstance(child, (dict, list)):
            break
        chain.append(child)
    first_list = next((d for d, c in enumerate(chain) if isinstance(c, list)), None)
    for cut in ([first_list] if first_list is not None else []) + list(range(min(len(loc), len(chain)) - 1, -1, -1)):
        parent, key = chain[cut], loc[cut]
        field = cls.model_fields.get(str(key)) if cut == 0 else None
        if not _has(parent, key) or (cut == 0 and field is not None and field.is_required()):
            continue
        del parent[key]
        kind = {"dict_type": "a dict", "list_type": "a list"}.get(error["type"]) if cut == len(loc) - 1 else None
        reason = f"is not {kind}" if kind else f"does not fit the schema ({error['msg']})"
        notes.append(f"{path}: '{_where(tuple(loc[: cut + 1]))}' {reason}, ignored")
        return True
    return False


def _has(container: Any, part: Any) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


class Entry(BaseModel):
    """A piece inside a run file (no reader of its own)."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------------------
# Rates and paired tests


class _Counts(Entry):
    """Counts of judged replies; older files call ``no_verdict`` ``errors``."""

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "errors" in data:
            data = dict(data)
            errors = data.pop("errors")
            data.setdefault("no_verdict", errors)
        return data

    @computed_field  # written beside no_verdict under its older name, which the seed's schema readers use
    @property
    def errors(self) -> int:
        return self.no_verdict


class RateSummary(_Counts):
    """Refusals ``k`` of ``n`` judged replies with a 95% Wilson interval; ``no_verdict`` replies (empty, an
    unterminated ``<think>``, a judge error) are left out of ``n`` and counted; ``total = n + no_verdict``."""

    rate: float | None
    k: int = Field(ge=0)
    n: int = Field(ge=0)
    no_verdict: int = Field(0, ge=0)
    total: int | None = None
    ci95: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _filled_in(self) -> RateSummary:
        if self.total is None:
            self.total = self.n + self.no_verdict
        if self.ci95 is None:
            self.ci95 = tuple(round(x, 4) for x in wilson_interval(self.k, self.n))
        return self

    @classmethod
    def of(cls, verdicts: list[bool | None]) -> RateSummary:
        return cls.model_validate(rate_summary(verdicts))

    @classmethod
    def pooled(cls, summaries: list[RateSummary]) -> RateSummary:
        """Refusals, judged replies and replies without a verdict summed over seeds, with the Wilson interval of
        the pooled counts (the seeds' prompts are different draws, so the counts add up)."""
        k, n = sum(s.k for s in summaries), sum(s.n for s in summaries)
        return cls(rate=k / n if n else None, k=k, n=n, no_verdict=sum(s.no_verdict for s in summaries))


class McNemarRow(Entry):
    """An exact McNemar test between two models on the prompts both have a verdict on."""

    set: str | None = None
    model_a: str
    model_b: str
    refused_a_only: int = Field(ge=0)
    refused_b_only: int = Field(ge=0)
    both: int | None = None
    neither: int | None = None
    n_pairs: int = Field(ge=0)
    n_excluded: int = Field(0, ge=0)
    p_value: float = Field(ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _older_shapes(cls, data: Any) -> Any:
        """``a/b/refused_a_only/refused_b_only`` (local evaluation) and ``model_a/model_b/b/c`` (evaluate-http)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "model_a" in data and "b" in data and "c" in data:
            data["refused_a_only"], data["refused_b_only"] = data.pop("b"), data.pop("c")
        elif "a" in data and "model_a" not in data:
            data["model_a"], data["model_b"] = data.pop("a"), data.pop("b", None)
        return data


class FineTuneAccuracy(Entry):
    """Fine-tune accuracy (FA): ``k`` correct of ``n`` test items of a benign task, with a 95% Wilson interval
    (``tasks.AccuracyResult.summary``); the per-item replies are in ``results/fine_tune_accuracy/<model>.jsonl``."""

    task: str
    k: int = Field(ge=0)
    n: int = Field(ge=0)
    rate: float | None
    ci95: tuple[float, float] | None = None
    max_new_tokens: int | None = None

    @model_validator(mode="after")
    def _interval(self) -> FineTuneAccuracy:
        if self.ci95 is None:
            self.ci95 = tuple(round(x, 4) for x in wilson_interval(self.k, self.n))
        return self


class MeanScore(Entry):
    """A mean of graded scores in [0, 1] (StrongREJECT's) over ``n`` replies, with a 95% percentile-bootstrap
    interval over the prompts."""

    mean: float | None
    n: int = Field(ge=0)
    no_verdict: int = Field(0, ge=0)
    ci95: tuple[float, float] | None = None


class HarmSummary(Entry):
    """A harm judge's reading of one model on one harmful set, kept apart from its refusal rate: ``harmful`` is the
    share of replies judged harmful (HarmBench's yes), ``score`` the mean harm score (StrongREJECT)."""

    harmful: RateSummary | None = None
    score: MeanScore | None = None


class Utility(Entry):
    attack_heldout_loss: float | None = None
    benign_perplexity: float | None = None
    fine_tune_accuracy: FineTuneAccuracy | None = None  # only when the run has a benign task (attack.benign_task)


class DiagnosticsOverall(Entry):
    cosine: float
    energy_in_ref_subspace: float
    attack_norm: float
    modules: int
    k: int | None = None


def _judge_words(judge: str | dict[str, Any] | None) -> str | None:
    if isinstance(judge, dict):
        return f"{judge.get('name')} (model {judge.get('model')} at {judge.get('endpoint')})"
    return judge


class ModelEvaluation(RunFile):
    """``results/models/<model>.json``: one model's judged records per prompt set and its utility (the
    ``eval:<model>`` stage); the ``evaluate`` stage brings every model's together into ``summary.json``."""

    model: str
    records: dict[str, list[dict[str, Any]]]
    utility: dict[str, Any] = {}


class Summary(RunFile):
    """``results/summary.json``: every model's rates per prompt set, paired tests, utility and run facts."""

    @property
    def judge_label(self) -> str | None:
        """The refusal judge in words: ``keyword``, or ``strongreject (model M at URL)`` for an LLM judge."""
        return _judge_words(self.judge)

    @property
    def harm_judge_label(self) -> str | None:
        return _judge_words(self.harm_judge)

    judge: str | dict[str, Any] | None = None
    harm_judge: str | dict[str, Any] | None = None
    seed: int | None = None
    prompt_sets: dict[str, int] = {}
    harmful_sets: list[str] = []
    benign_sets: list[str] = []
    models: dict[str, dict[str, RateSummary]]
    categories: dict[str, dict[str, dict[str, RateSummary]]] = {}
    utility: dict[str, Utility] = {}
    harm: dict[str, dict[str, HarmSummary]] = {}  # model -> harmful set -> the harm judge's reading
    mcnemar: dict[str, list[McNemarRow]] = {}
    attacked: str | None = None
    controls: dict[str, dict[str, str]] = {}  # defence -> {control kind: control}
    diagnostics: dict[str, dict[str, DiagnosticsOverall]] = {}
    versions: dict[str, str] = {}  # what computed these numbers (``provenance.versions``)

    @model_validator(mode="before")
    @classmethod
    def _older_controls(cls, data: Any) -> Any:
        """Older runs wrote ``controls: {defence: its same-rank control}``."""
        if isinstance(data, dict) and isinstance(data.get("controls"), dict):
            data = {**data, "controls": {d: {"same_rank": c} if isinstance(c, str) else c
                                         for d, c in data["controls"].items()}}
        return data


# ---------------------------------------------------------------------------------------------------------
# Data, training logs and diagnostics


class Splits(RunFile):
    """``data/splits.json``: the HarmfulQA questions of each role (disjoint) and the harmless prompts."""

    refusal: list[str]
    attack: list[str]
    attack_heldout: list[str] = []
    test: list[str]
    probe: list[str] = []
    benign_train: list[str] = []
    benign_eval: list[str] = []
    source: str | None = None
    seed: int | None = None


class AttackMixture(RunFile):
    """``data/attack_mixture.<variant>.json``: the harmful-ratio mixture a variant trained on
    (``tasks.MixtureInfo``): ``n_harmful`` of the attack samples and ``n_benign`` of the task's, the harmful
    questions used, the sample sources and a sha256 of the mixture's messages in order."""

    variant: str
    task: str | None = None
    p: float = Field(ge=0, le=1)
    n: int = Field(ge=1)
    seed: int
    n_harmful: int = Field(ge=0)
    n_benign: int = Field(ge=0)
    harmful_available: int = Field(ge=0)
    harmful_questions: list[str] = []
    sources: dict[str, int] = {}
    digest: str = ""


class LossRecord(Entry):
    """One optimizer step: the seed's fields, and what the attack mode's hooks add (floats only)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float]
    step: int
    epoch: float | None = None
    loss: float
    learning_rate: float | None = None
    grad_norm: float | None = None


class ProbeRecord(_Counts):
    step: int
    refusal_rate: float | None
    k: int
    n: int
    no_verdict: int = 0
    total: int | None = None
    ci95: tuple[float, float] = (0.0, 1.0)
    verdicts: list[bool | None] | None = None  # per probe prompt, in the probe split's order (older logs: absent)


class TensorShare(Entry):
    shape: list[int]
    removed_energy_share: float
    energy: float


class ProjectionLog(Entry):
    family: str | None = None
    at: str
    tensors: dict[str, TensorShare] = {}


class TrainLog(RunFile):
    """``logs/training_loss_<name>.json``: the loss per optimizer step, the probes and what the hooks log."""

    mode: str
    config: dict[str, Any] = {}
    train_samples: int | None = None
    seconds: float | None = None
    init_seed: int | None = None
    resumed_from_step: int | None = None
    world_size: int | None = None
    attention: str | None = None  # the training step's attention (attention.resolve): sdpa or eager; older logs: none
    packed: bool | None = None  # packed batches (attention.resolve_packing); older logs: none (padded)
    losses: list[LossRecord] = []
    probes: list[ProbeRecord] | None = None
    projection: ProjectionLog | None = None
    defence: dict[str, Any] | None = None  # a literature defence's record (defences/: safelora's selection, asft's lambda)
    applied_to: str | None = None  # a post-hoc defence: the vanilla attack whose training (losses) it projected
    diagnostics: dict[str, Any] | None = None  # older runs kept the weight-space diagnostics here

    @property
    def variant(self) -> dict[str, Any] | None:
        v = self.config.get("variant")
        return v if isinstance(v, dict) else None


class Diagnostics(RunFile):
    """``logs/diagnostics_<variant>.json``: the attack's change against the refusal change, per module and overall
    (empty when the run had no refusal adapter to compare with)."""

    overall: DiagnosticsOverall | None = None
    modules: dict[str, dict[str, float]] = {}


# ---------------------------------------------------------------------------------------------------------
# Bookkeeping


class StageRecord(Entry):
    key: str
    config: str | None = None
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}
    seconds: float | None = None
    finished: str | None = None
    versions: dict[str, str] = {}  # orthoguard (and its git commit) and the libraries (``provenance.versions``)


class StageRecords(_FileIO, RootModel[dict[str, StageRecord]]):
    """``stages.json``: what each stage last ran with (see ``pipeline.Run.stage``)."""


class SeedsIndex(RunFile):
    """``seeds.json`` of a multi-seed root: the seeds and their run folders."""

    seeds: list[int]
    runs: dict[str, str] = {}
