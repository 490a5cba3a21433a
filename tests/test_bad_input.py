"""Property-based tests: malformed HarmfulQA rows, configs and judge replies never crash with a traceback.

Each is either accepted or rejected with orthoguard's own one-line error naming the field; skipped rows are counted.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthoguard.config import ExperimentConfig, load_config
from orthoguard.data import load_harmfulqa_with_report
from orthoguard.errors import OrthoguardError
from orthoguard.judges import Verdict
from orthoguard.judges.keyword import KeywordJudge
from orthoguard.judges.llm import parse_harmbench, parse_sorry_bench, parse_strongreject

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", 3, None]), "value": st.text(max_size=30) | st.none()})
conversations = st.dictionaries(st.sampled_from(["0", "1", "2", "x"]), st.lists(turn | json_values, max_size=4) | st.none(), max_size=3)
row = st.fixed_dictionaries(
    {"question": st.text(max_size=30) | st.none() | st.integers()},
    optional={"topic": json_values, "subtopic": json_values, "blue_conversations": conversations | json_values,
              "red_conversations": conversations | json_values},
)


@SETTINGS
@given(st.lists(row | json_values, max_size=8))
def test_malformed_harmfulqa_rows_are_skipped_and_counted(tmp_path, rows):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    try:
        loaded, skipped = load_harmfulqa_with_report(str(path))
    except OrthoguardError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert len(loaded) + len(skipped) == len(rows)
    assert all("\n" not in line for line in skipped)


config_sections = st.dictionaries(
    st.sampled_from(list(ExperimentConfig.model_fields) + ["unknown", "modle"]),
    json_values | st.dictionaries(st.sampled_from(["name", "epochs", "lora", "variants", "r", "x"]), json_values, max_size=3),
    max_size=4,
)


@SETTINGS
@given(config_sections)
def test_random_configs_load_or_fail_with_one_line(tmp_path, raw):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    try:
        load_config(path)
    except OrthoguardError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(path))


@SETTINGS
@given(st.text(max_size=300))
def test_judge_replies_are_a_verdict_or_a_judge_error(reply):
    for parse in (parse_sorry_bench, parse_harmbench, parse_strongreject):
        verdict = parse(reply)
        assert isinstance(verdict, Verdict)
        assert (verdict.refused is None) == (verdict.error is not None)
        if verdict.error:
            assert verdict.error.startswith("judge_error")
    verdict = KeywordJudge().judge("prompt", reply)
    assert verdict.refused in (True, False) or verdict.error == "empty response"
