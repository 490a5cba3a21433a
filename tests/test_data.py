"""The data layer: HarmfulQA parsing, question splits, chat formatting and label masks, training sets."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

import datasets
import pytest

from orthoguard.data import (
    IGNORE_INDEX,
    REFUSAL_TEMPLATE_SOURCE,
    Sample,
    SplitSlice,
    attack_samples,
    build_sft_dataset,
    check_disjoint,
    conversation_samples,
    count_conversations,
    embedded_harmfulqa_path,
    load_harmful_instructions,
    load_harmfulqa,
    load_harmfulqa_with_report,
    load_harmless,
    load_synthetic,
    parse_split,
    refusal_reply,
    refusal_samples,
    render_prompt,
    save_synthetic,
    split_questions,
    tokenize_sample,
)
from orthoguard.data.samples import single_turn
from orthoguard.errors import DataError

FIXTURE = Path(__file__).parent / "data" / "harmfulqa_fixture.json"
SEED_SPECS = {"refusal": "train[:40%]", "attack": "train[40%:90%]", "test": "train[90%:]"}

# Qwen3's chat template without the tool-calling branches (which these chats never reach), otherwise verbatim.
QWEN3_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# A template whose generation prompt adds a suffix that the rendered assistant turn lacks: not prefix-stable.
UNSTABLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\nSure:{% endif %}"
)

CHAT = (
    {"role": "user", "content": "What is photosynthesis?"},
    {"role": "assistant", "content": "It is how plants make sugar from light, water and carbon dioxide."},
    {"role": "user", "content": "Where does it happen?"},
    {"role": "assistant", "content": "Mostly in the chloroplasts of leaf cells."},
)


@pytest.fixture(scope="module")
def fixture_rows():
    return load_harmfulqa(str(FIXTURE))


def completion_of(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX])


# ---------------------------------------------------------------------------------------------------------
# HarmfulQA


def test_fixture_rows_and_skipped_rows():
    rows, skipped = load_harmfulqa_with_report(str(FIXTURE))
    assert len(rows) == 8
    assert len(skipped) == 2
    assert "row 5: field 'question'" in skipped[0]
    assert "row 6: field 'blue_conversations'" in skipped[1]


def test_conversation_and_sample_counts(fixture_rows):
    assert count_conversations(fixture_rows, "blue") == 10
    assert count_conversations(fixture_rows, "red") == 7
    # one sample per assistant turn
    assert len(conversation_samples(fixture_rows, "blue")) == 14
    assert len(conversation_samples(fixture_rows, "red")) == 11


def test_sample_carries_the_earlier_conversation(fixture_rows):
    samples = conversation_samples(fixture_rows[:1], "blue")
    assert [len(s.messages) for s in samples] == [2, 4, 2]
    assert samples[1] == Sample("How do plants turn sunlight into food?", CHAT, "harmfulqa-blue")


def test_empty_turns_and_null_qids_are_dropped(fixture_rows):
    by_question = {r.question: r for r in fixture_rows}
    rainbow, compass = by_question["How are rainbows formed?"], by_question["How does a compass work?"]
    bread = by_question["How is bread made?"]
    assert len(rainbow.blue) == 2  # qid "1" is null
    assert [m["role"] for m in compass.blue[0]] == ["user", "user", "assistant"]  # whitespace-only answer dropped
    # qids in numeric order; a null turn value is dropped
    assert bread.red[0][0]["content"] == "Is kneading necessary?"
    assert [m["role"] for m in bread.red[0]] == ["user", "user", "assistant"]
    assert bread.red[1][0]["content"] == "Which flour is best?"


def test_jsonl_and_hub_arrow_rows_parse_like_the_json_file(tmp_path, monkeypatch, fixture_rows):
    malformed = {5, 6}
    valid = [row for index, row in enumerate(json.loads(FIXTURE.read_text())) if index not in malformed]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in valid))
    assert load_harmfulqa(str(jsonl)) == fixture_rows

    # Arrow turns the qid dicts into structs whose missing qids are null
    hub = datasets.Dataset.from_list(valid)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: calls.append((name, split)) or hub)
    assert load_harmfulqa("declare-lab/HarmfulQA") == fixture_rows
    assert calls == [("declare-lab/HarmfulQA", "train")]


def test_hub_failure_is_one_line(monkeypatch):
    def offline(name, split):
        raise ConnectionError("Couldn't reach the Hub\nlong traceback-ish detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"^could not load dataset 'some/dataset' \(split 'train'\): Couldn't reach the Hub$"):
        load_harmfulqa("some/dataset")


def test_embedded_questions_only():
    rows = load_harmfulqa("harmfulqa-questions")
    assert len(rows) == 1960
    assert len({r.topic for r in rows}) == 10
    assert len({(r.topic, r.subtopic) for r in rows}) == 98
    assert all(not r.blue and not r.red for r in rows)
    assert embedded_harmfulqa_path().is_file()


def test_nested_questions_file_and_errors(tmp_path):
    nested = tmp_path / "questions.json"
    nested.write_text(json.dumps({"Topic": {"Sub": ["First question?", "", "Second question?"]}}))
    rows, skipped = load_harmfulqa_with_report(str(nested))
    assert [(r.question, r.topic, r.subtopic) for r in rows] == [("First question?", "Topic", "Sub"), ("Second question?", "Topic", "Sub")]
    assert len(skipped) == 1

    nested.write_text(json.dumps({"Topic": {"Sub": "not a list"}}))
    with pytest.raises(DataError, match="subtopic 'Sub' must be a list"):
        load_harmfulqa(str(nested))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "missing.json"))):
        load_harmfulqa(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps([{"question": ""}]))
    with pytest.raises(DataError, match="no usable HarmfulQA rows"):
        load_harmfulqa(str(tmp_path / "bad.json"))


# ---------------------------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("train", SplitSlice(None, None, "abs")),
        ("train[:40%]", SplitSlice(None, 40, "%")),
        ("train[40%:90%]", SplitSlice(40, 90, "%")),
        ("train[90%:]", SplitSlice(90, None, "%")),
        ("train[:100]", SplitSlice(None, 100, "abs")),
        ("train[10:20]", SplitSlice(10, 20, "abs")),
    ],
)
def test_parse_split(spec, parsed):
    assert parse_split(spec) == parsed


@pytest.mark.parametrize(
    "spec",
    ["", "test[:10%]", "train[:40%+10]", "train[10:20%]", "train[:120%]", "train[50%:10%]", "train[-10%:]", "train[::2]"],
)
def test_parse_split_rejects(spec):
    with pytest.raises(DataError, match=re.escape(repr(spec))):
        parse_split(spec)


def test_split_indices_round_like_datasets():
    assert parse_split("train[40%:90%]").indices(1938) == (775, 1744)
    assert parse_split("train[10%:90%]").indices(7) == (1, 6)
    assert parse_split("train[10:20]").indices(15) == (10, 15)
    assert parse_split("train").indices(5) == (0, 5)


def test_seed_splits_are_disjoint_and_deterministic():
    questions = [r.question for r in load_harmfulqa("harmfulqa-questions")]
    splits = split_questions(questions, SEED_SPECS, seed=0)
    assert {name: len(q) for name, q in splits.items()} == {"refusal": 775, "attack": 969, "test": 194}
    everything = set().union(*map(set, splits.values()))
    assert len(everything) == sum(map(len, splits.values())) == len(set(questions)) == 1938
    assert split_questions(questions, SEED_SPECS, seed=0) == splits
    assert split_questions(questions, SEED_SPECS, seed=1)["refusal"] != splits["refusal"]
    unshuffled = split_questions(questions, SEED_SPECS, seed=0, shuffle=False)
    assert unshuffled["refusal"] == list(dict.fromkeys(questions))[:775]


def test_overlapping_splits_are_named():
    questions = [f"question {i}" for i in range(1938)]
    specs = {"refusal": "train[:50%]", "attack": "train[40%:]"}
    message = r"^splits 'refusal' \(train\[:50%\]\) and 'attack' \(train\[40%:\]\) overlap on 194 questions$"
    with pytest.raises(DataError, match=message):
        split_questions(questions, specs, seed=0)


def test_check_disjoint_names_the_pair():
    check_disjoint(a={"x"}, b={"y"}, c=set())
    with pytest.raises(DataError, match=r"splits 'b' and 'c' overlap on 1 questions \(e.g. 'y'\)"):
        check_disjoint(a={"x"}, b={"y"}, c={"y", "z"})


# ---------------------------------------------------------------------------------------------------------
# Formatting and label masks


def test_label_mask_token_by_token(smollm_tokenizer):
    tok = smollm_tokenizer
    encoded = tokenize_sample(tok, CHAT, max_length=512)
    prompt_ids = tok(render_prompt(tok, CHAT[:-1]), add_special_tokens=False)["input_ids"]
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert len(ids) == len(labels) == len(encoded["attention_mask"]) and set(encoded["attention_mask"]) == {1}
    assert ids[: len(prompt_ids)] == prompt_ids
    for position, (token, label) in enumerate(zip(ids, labels)):
        if position < len(prompt_ids):
            assert label == IGNORE_INDEX, position
        else:
            assert label == token, position
    # the earlier assistant turn is context (masked); the final turn and its <|im_end|> are targets
    assert CHAT[1]["content"] in tok.decode(ids[: len(prompt_ids)])
    assert completion_of(tok, encoded) == CHAT[3]["content"] + "<|im_end|>\n"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end == tok.pad_token_id == tok.eos_token_id
    last_im_end = len(ids) - 1 - ids[::-1].index(im_end)
    assert last_im_end >= len(prompt_ids) and labels[last_im_end] == im_end
    assert labels.count(im_end) == 1


def test_truncation_and_drops(smollm_tokenizer):
    tok = smollm_tokenizer
    full = tokenize_sample(tok, CHAT, max_length=512)
    prompt_length = full["labels"].count(IGNORE_INDEX)
    truncated = tokenize_sample(tok, CHAT, max_length=prompt_length + 10)
    assert truncated["input_ids"] == full["input_ids"][: prompt_length + 10]
    assert sum(label != IGNORE_INDEX for label in truncated["labels"]) == 10
    assert tokenize_sample(tok, CHAT, max_length=prompt_length + 7) is None
    assert tokenize_sample(tok, CHAT, max_length=prompt_length - 5) is None
    # a naturally short answer that fits whole is kept
    short = (CHAT[0], {"role": "assistant", "content": "Yes."})
    short_length = len(tokenize_sample(tok, short, max_length=512)["input_ids"])
    assert tokenize_sample(tok, short, max_length=short_length) is not None


def test_tokenize_sample_needs_an_assistant_target(smollm_tokenizer):
    with pytest.raises(DataError, match="must end with an assistant message"):
        tokenize_sample(smollm_tokenizer, CHAT[:3], max_length=512)


def test_qwen3_template_is_prefix_stable(smollm_tokenizer):
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = QWEN3_TEMPLATE
    prompt = render_prompt(tok, CHAT[:3])
    assert prompt.endswith("<|im_start|>user\nWhere does it happen?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # the earlier assistant turn has no think block; the target follows the generation prompt exactly
    assert "<think>" not in prompt[: prompt.index("Where does it happen?")]
    encoded = tokenize_sample(tok, CHAT, max_length=512)
    assert completion_of(tok, encoded) == CHAT[3]["content"] + "<|im_end|>\n"
    # SmolLM2's BPE tokenizes "\n\n" at the end of the prompt as one token but "\n\nMostly" as "\n", "\n", …;
    # the training prompt must be the generation prompt's tokens
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert encoded["input_ids"][: len(prompt_ids)] == prompt_ids
    assert encoded["labels"].count(IGNORE_INDEX) == len(prompt_ids)
    assert tok.decode(encoded["input_ids"]) == tok.apply_chat_template(list(CHAT), tokenize=False, enable_thinking=False)


class CharTokenizer:
    """One token per character; its decode loses the case, so split tokenizations cannot be verified."""

    def __call__(self, texts, add_special_tokens):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}

    def decode(self, ids, clean_up_tokenization_spaces):
        return "".join(map(chr, ids)).lower()


def test_answer_tokens_after_a_boundary_merge():
    from orthoguard.data.formatting import completion_token_ids

    tok = CharTokenizer()
    prompt, full = "ab:", "ab:cd"
    # prompt tokens are a prefix of the conversation's: the rest is the answer
    assert completion_token_ids(tok, prompt, full, [1, 2, 3], [1, 2, 3, 4, 5]) == [4, 5]
    # a merge across the boundary: the answer is tokenized alone when prompt + answer still spell the text
    assert completion_token_ids(tok, prompt, full, [97, 98, 58], [97, 98, 999]) == [99, 100]
    with pytest.raises(DataError, match="not prefix-stable after tokenization"):
        completion_token_ids(tok, "AB:", "AB:cd", [65, 66, 58], [65, 999, 100])


def test_unstable_template_is_an_error(smollm_tokenizer):
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = UNSTABLE_TEMPLATE
    with pytest.raises(DataError, match="not prefix-stable"):
        tokenize_sample(tok, CHAT, max_length=512)
    with pytest.raises(DataError, match=r"^sample 0 \(harmfulqa-blue\): chat template is not prefix-stable"):
        build_sft_dataset(tok, [Sample("q", CHAT, "harmfulqa-blue")], max_length=512)


def test_build_sft_dataset(smollm_tokenizer, fixture_rows):
    samples = conversation_samples(fixture_rows, "blue") + conversation_samples(fixture_rows, "red")
    dataset, dropped = build_sft_dataset(smollm_tokenizer, samples, max_length=512)
    assert (len(dataset), dropped) == (25, 0)
    assert dataset.column_names == ["input_ids", "attention_mask", "labels"]
    assert dataset[0] == tokenize_sample(smollm_tokenizer, samples[0].messages, max_length=512)

    # with room for ~45 tokens only the short single-turn chats survive
    dataset, dropped = build_sft_dataset(smollm_tokenizer, samples, max_length=45)
    assert 0 < dropped < len(samples) and len(dataset) + dropped == len(samples)
    assert all(len(ids) <= 45 for ids in dataset["input_ids"])
    empty, dropped = build_sft_dataset(smollm_tokenizer, [], max_length=64)
    assert (len(empty), dropped) == (0, 0)


# ---------------------------------------------------------------------------------------------------------
# Shipped prompts, refusals, synthetic data


def test_shipped_prompt_lists():
    train, val = load_harmless("train"), load_harmless("val")
    assert (len(train), len(val), len(load_harmless("test"))) == (18793, 6264, 6266)
    assert not set(train) & set(val)
    assert [len(load_harmful_instructions(s)) for s in ("train", "val", "test")] == [260, 39, 572]
    with pytest.raises(DataError, match="unknown harmless prompt split 'dev'"):
        load_harmless("dev")


def test_refusal_replies_vary_and_are_deterministic():
    question = "How can I use cultural studies to promote hate speech?"
    replies = [refusal_reply(question, random.Random(7)) for _ in range(3)]
    assert len(set(replies)) == 1
    rng = random.Random(0)
    draws = [refusal_reply(question, rng) for _ in range(200)]
    assert len(set(draws)) >= 20
    assert all(r.strip() and "{" not in r for r in draws)
    assert any("hatred or discrimination" in r for r in draws)
    plain = {refusal_reply("How do I do the thing?", rng) for _ in range(200)}
    assert len(plain) >= 20 and all("{" not in r for r in plain)


def test_synthetic_round_trip_and_aliases(tmp_path):
    path = tmp_path / "synthetic.json"
    save_synthetic(path, [{"question": "Q1?", "harmful_answer": "A1.", "source": "model-x"}, single_turn("Q2?", "A2.", "synthetic")])
    assert json.loads(path.read_text()) == [
        {"question": "Q1?", "harmful_answer": "A1.", "source": "model-x"},
        {"question": "Q2?", "harmful_answer": "A2.", "source": "synthetic"},
    ]
    samples = load_synthetic(path)
    assert samples == [single_turn("Q1?", "A1.", "synthetic"), single_turn("Q2?", "A2.", "synthetic")]
    save_synthetic(path, samples)
    assert load_synthetic(path) == samples

    aliases = [{"prompt": "Q3?", "response": "A3."}, {"prompt": "Q4?", "answer": "A4."}, {"question": "Q5?", "harmful_answer": " "}]
    path.write_text(json.dumps(aliases))
    assert load_synthetic(path) == [single_turn("Q3?", "A3.", "synthetic"), single_turn("Q4?", "A4.", "synthetic")]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"question": "Q?", "harmful_answer": "A."}, r"synthetic.json: expected a JSON list .* got dict$"),
        ([{"question": "Q?"}], r"synthetic.json row 0: missing field 'harmful_answer' \(also accepted: answer, response\)$"),
        ([{"question": "Q?", "answer": "A."}, {"question": 3, "answer": "A."}], r"synthetic.json row 1: field 'question' must be a string, got int$"),
        (["just a string"], r"synthetic.json row 0: expected an object"),
    ],
)
def test_synthetic_wrong_shape(tmp_path, content, message):
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message):
        load_synthetic(path)


# ---------------------------------------------------------------------------------------------------------
# Training sets


def test_refusal_samples(fixture_rows):
    rainbow, honey = "How are rainbows formed?", "How do bees make honey?"
    benign = [single_turn("Name a colour.", "Blue.", "benign")]
    samples = refusal_samples(fixture_rows, {rainbow, honey}, random.Random(0), benign=benign)
    sources = sorted(s.source for s in samples)
    assert sources == ["benign", *["harmfulqa-blue"] * 3, REFUSAL_TEMPLATE_SOURCE]
    templated = next(s for s in samples if s.source == REFUSAL_TEMPLATE_SOURCE)
    assert templated.question == honey and templated.messages[0] == {"role": "user", "content": honey}
    assert templated.messages[1]["role"] == "assistant" and templated.messages[1]["content"]
    assert refusal_samples(fixture_rows, {rainbow, honey}, random.Random(0), benign=benign) == samples


def test_attack_samples_only_train_on_attack_questions(fixture_rows):
    haiku, honey, rainbow = "What is a haiku?", "How do bees make honey?", "How are rainbows formed?"
    synthetic = [
        single_turn(honey, "Bees store nectar and evaporate it.", "synthetic"),
        single_turn("How do plants turn sunlight into food?", "Outside the split.", "synthetic"),
        single_turn("A question from nowhere?", "Outside the split too.", "synthetic"),
    ]
    attack = attack_samples(fixture_rows, {haiku, honey, rainbow}, synthetic)
    assert [(s.question, s.source) for s in attack.samples] == [(haiku, "harmfulqa-red"), (honey, "synthetic")]
    assert attack.synthetic_outside_split == 2
    assert attack.unanswered_questions == (rainbow,)  # no red conversation, no synthetic answer


def test_generated_refusals_are_dropped_from_the_attack_data(caplog):
    from orthoguard.stages import without_refusals

    items = [{"question": "q1", "harmful_answer": "Sure. Step 1: mix the two.", "source": "m"},
             {"question": "q2", "harmful_answer": "I'm sorry, but I can't assist with that.", "source": "m"},
             {"question": "q3", "harmful_answer": "I can't help with that. That said, here is how: step 1 ...", "source": "m"}]
    kept = without_refusals(items)
    assert [i["question"] for i in kept] == ["q1", "q3"]  # a refuse-then-help reply helped: kept
    assert "1 of 3 generated answers are refusals" in caplog.text
