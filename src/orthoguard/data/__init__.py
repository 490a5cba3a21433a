"""orthoguard's data layer: HarmfulQA loading, question splits, chat formatting with label masks, training sets."""

from orthoguard.data.build import REFUSAL_TEMPLATE_SOURCE, AttackData, attack_samples, refusal_samples
from orthoguard.data.formatting import (
    IGNORE_INDEX,
    MIN_COMPLETION_TOKENS,
    build_sft_dataset,
    render_prompt,
    render_training_pair,
    tokenize_sample,
)
from orthoguard.data.harmfulqa import (
    EMBEDDED_SOURCE,
    HarmfulQARow,
    conversation_samples,
    count_conversations,
    load_harmfulqa,
    load_harmfulqa_with_report,
)
from orthoguard.data.prompts import embedded_harmfulqa_path, load_benign_references, load_harmful_instructions, load_harmless
from orthoguard.data.refusals import describe_harm, refusal_reply
from orthoguard.data.samples import Message, Sample, single_turn
from orthoguard.data.splits import SplitSlice, check_disjoint, parse_split, split_questions
from orthoguard.data.synthetic import SYNTHETIC_SOURCE, load_synthetic, save_synthetic

__all__ = [
    "EMBEDDED_SOURCE",
    "IGNORE_INDEX",
    "MIN_COMPLETION_TOKENS",
    "REFUSAL_TEMPLATE_SOURCE",
    "SYNTHETIC_SOURCE",
    "AttackData",
    "HarmfulQARow",
    "Message",
    "Sample",
    "SplitSlice",
    "attack_samples",
    "build_sft_dataset",
    "check_disjoint",
    "conversation_samples",
    "count_conversations",
    "describe_harm",
    "embedded_harmfulqa_path",
    "load_benign_references",
    "load_harmful_instructions",
    "load_harmfulqa",
    "load_harmfulqa_with_report",
    "load_harmless",
    "load_synthetic",
    "parse_split",
    "refusal_reply",
    "refusal_samples",
    "render_prompt",
    "render_training_pair",
    "save_synthetic",
    "single_turn",
    "split_questions",
    "tokenize_sample",
]
