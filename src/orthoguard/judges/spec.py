"""``evaluation.judge`` in a config: a judge by name, and for an LLM judge its endpoint, model and settings."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class JudgeSpec(BaseModel):
    """A judge by name; an LLM judge also names its OpenAI-compatible endpoint and model. The API key comes from
    ``$ORTHOGUARD_JUDGE_API_KEY`` (never from the config, so it is never saved with the run)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "keyword"
    endpoint: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(0.0, ge=0)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(8, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known_and_complete(self) -> JudgeSpec:
        from orthoguard.judges import JUDGES
        from orthoguard.judges.llm import LLMJudge

        if self.name not in JUDGES:
            raise ValueError(f"unknown judge {self.name!r} (known: {', '.join(sorted(JUDGES))})")
        llm = issubclass(JUDGES[self.name], LLMJudge)
        if llm and not (self.endpoint and self.model):
            raise ValueError(f"judge {self.name!r} is an LLM judge: give its endpoint and model")
        if not llm and (self.endpoint or self.model):
            raise ValueError(f"judge {self.name!r} runs locally: endpoint and model are for LLM judges")
        return self

    @model_serializer(mode="wrap")
    def _as_name_when_local(self, handler):
        """A local judge with default settings is written as its name (``judge: keyword``), as before the spec."""
        data = handler(self)
        return self.name if self.endpoint is None and self == JudgeSpec(name=self.name) else data

    @property
    def version(self) -> str:
        """The judge's rule or template version: part of the stage keys of whatever it judges."""
        from orthoguard.judges import JUDGES

        return str(getattr(JUDGES[self.name], "version", "1"))

    @property
    def measures(self) -> frozenset[str]:
        """``{"refusal"}``, ``{"harm"}`` or both: what the judge's verdicts say (``orthoguard.judges``)."""
        from orthoguard.judges import JUDGES, measures

        return measures(JUDGES[self.name])

    @property
    def is_llm(self) -> bool:
        return self.endpoint is not None

    def build(self):
        """The judge this spec names (an LLM judge with its endpoint, model and settings)."""
        from orthoguard.judges import get_judge

        if self.endpoint is None:
            return get_judge(self.name)
        return get_judge(self.name, endpoint=self.endpoint, model=self.model, timeout=self.timeout,
                         max_retries=self.max_retries, max_tokens=self.max_tokens, temperature=self.temperature)
