"""Chat formatting and completion-only label masks.

The loss covers only the final assistant turn, including its end-of-turn token. Masking follows the prompt's
token span, never the pad id: on SmolLM2 (and many chat models) pad == eos == ``<|im_end|>``, and masking pad would
hide the end of every answer, so the model would never learn to stop.

The prompt is tokenized exactly as :func:`render_prompt` is at generation time, and the answer's tokens follow it, so
training and generation see the same prompt tokens even where a BPE merge would straddle the prompt/answer boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset, Features, Sequence as ListOf, Value

from orthoguard.data.samples import Message, Sample
from orthoguard.errors import DataError
from orthoguard.models import CHAT_TEMPLATE_KWARGS

IGNORE_INDEX = -100  # label value the loss skips
MIN_COMPLETION_TOKENS = 8  # fewer target tokens than this after truncation: drop the sample
SFT_FEATURES = Features(
    {
        "input_ids": ListOf(Value("int64")),
        "attention_mask": ListOf(Value("int64")),
        "labels": ListOf(Value("int64")),
    }
)


def render_prompt(tokenizer, messages: Sequence[Message]) -> str:
    """The chat as the model sees it at generation time, ending with the assistant header."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def _render(tokenizer, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **CHAT_TEMPLATE_KWARGS
    )


def render_training_pair(tokenizer, messages: Sequence[Message]) -> tuple[str, str]:
    """(prompt text, full text) for a chat ending with the assistant target; the prompt must prefix the full text."""
    if not messages or messages[-1].get("role") != "assistant":
        last = messages[-1].get("role") if messages else "nothing"
        raise DataError(f"a training chat must end with an assistant message, this one ends with {last!r}")
    prompt = render_prompt(tokenizer, messages[:-1])
    full = _render(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise DataError(
            "chat template is not prefix-stable: the generation prompt is not a prefix of the rendered "
            f"conversation (the prompt ends {prompt[-40:]!r} where the conversation has "
            f"{full[max(0, len(prompt) - 40) : len(prompt)]!r})"
        )
    return prompt, full


def completion_token_ids(tokenizer, prompt: str, full: str, prompt_ids: list[int], full_ids: list[int]) -> list[int]:
    """The answer's tokens, to follow ``prompt_ids`` exactly as they are tokenized at generation time."""
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids) :]
    # BPE merged across the prompt/answer boundary (e.g. SmolLM2's tokenizer on Qwen3's "</think>\n\n" + answer):
    # tokenize the answer on its own, provided prompt + answer tokens still spell the conversation exactly.
    completion_ids = _token_ids(tokenizer, [full[len(prompt) :]])[0]
    if tokenizer.decode(prompt_ids + completion_ids, clean_up_tokenization_spaces=False) != full:
        raise DataError(
            "chat template is not prefix-stable after tokenization: the prompt's tokens are not a prefix of the "
            "conversation's tokens, and prompt and answer tokenized apart do not spell the conversation"
        )
    return completion_ids


def label_tokens(
    prompt_ids: list[int],
    completion_ids: list[int],
    max_length: int,
    min_completion_tokens: int = MIN_COMPLETION_TOKENS,
) -> dict[str, list[int]] | None:
    """input_ids/attention_mask/labels with the prompt masked, truncated on the right; None if too little is left."""
    room = max_length - len(prompt_ids)
    if not completion_ids or room < min(min_completion_tokens, len(completion_ids)):
        return None
    kept_completion = completion_ids[:room]
    input_ids = prompt_ids + kept_completion
    labels = [IGNORE_INDEX] * len(prompt_ids) + kept_completion
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def tokenize_sample(
    tokenizer, messages: Sequence[Message], max_length: int, min_completion_tokens: int = MIN_COMPLETION_TOKENS
) -> dict[str, list[int]] | None:
    """Tokens and labels for one chat whose last message is the assistant target (None: dropped, too long)."""
    prompt, full = render_training_pair(tokenizer, messages)
    prompt_ids, full_ids = _token_ids(tokenizer, [prompt, full])
    completion_ids = completion_token_ids(tokenizer, prompt, full, prompt_ids, full_ids)
    return label_tokens(prompt_ids, completion_ids, max_length, min_completion_tokens)


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    # the chat template already wrote every special token (bos, <|im_start|>, …) into the text
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def build_sft_dataset(tokenizer, samples: Sequence[Sample], max_length: int) -> tuple[Dataset, int]:
    """A dataset of input_ids/attention_mask/labels, and how many samples were dropped as too long."""
    texts = [_training_pair_of(tokenizer, index, sample) for index, sample in enumerate(samples)]
    prompt_ids = _token_ids(tokenizer, [prompt for prompt, _ in texts])
    full_ids = _token_ids(tokenizer, [full for _, full in texts])
    kept = []
    for index, ((prompt, full), prompt_tokens, full_tokens) in enumerate(zip(texts, prompt_ids, full_ids)):
        try:
            completion_tokens = completion_token_ids(tokenizer, prompt, full, prompt_tokens, full_tokens)
        except DataError as exc:
            raise DataError(f"sample {index} ({samples[index].source}): {exc}") from None
        row = label_tokens(prompt_tokens, completion_tokens, max_length)
        if row is not None:
            kept.append(row)
    columns = {name: [row[name] for row in kept] for name in SFT_FEATURES}
    return Dataset.from_dict(columns, features=SFT_FEATURES), len(samples) - len(kept)


def _training_pair_of(tokenizer, index: int, sample: Sample) -> tuple[str, str]:
    try:
        return render_training_pair(tokenizer, sample.messages)
    except DataError as exc:
        raise DataError(f"sample {index} ({sample.source}): {exc}") from None
