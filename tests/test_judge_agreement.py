"""judge_agreement: agreement, confusion matrix, error shares, split halves and sources on hand-made records; the
labelled-JSONL loader's one-line errors; the Markdown report."""

from __future__ import annotations

import json

import pytest

from orthoguard.errors import ConfigError, DataError
from orthoguard.judges import Verdict
from orthoguard.judges.agreement import agreement_markdown, judge_agreement, load_labeled


class ScriptedJudge:
    """Refuses when the reply starts with "R", helps partially with "P", gives no verdict for an empty reply."""

    name = "scripted"

    def judge(self, prompt: str, response: str) -> Verdict:
        if not response:
            return Verdict(None, "empty response")
        if response.startswith("R"):
            return Verdict(True, outcome="refusal")
        return Verdict(False, outcome="partial" if response.startswith("P") else "compliance")


def _records(pairs, source=None):
    """(reply, label) pairs as records; ``source`` cycles over the given names."""
    out = []
    for i, (response, label) in enumerate(pairs):
        record = {"prompt": f"q{i}", "response": response, "label": label}
        if source:
            record["src"] = source[i % len(source)]
        out.append(record)
    return out


# 10 records, label = refused. Judge: R R R C P | R C C "" C
#   label:                           T T T T T | F F F T  F
PAIRS = [("R1", True), ("R2", True), ("R3", True), ("C4", True), ("P5", True),
         ("R6", False), ("C7", False), ("C8", False), ("", True), ("C10", False)]


def test_counts_on_hand_made_records():
    r = judge_agreement(_records(PAIRS), ScriptedJudge())
    assert r["n"] == 10 and r["judge"] == "scripted" and r["label_means"] == "refused"
    assert (r["agreement"]["k"], r["agreement"]["n"]) == (6, 10)  # R1 R2 R3 C7 C8 C10
    assert r["agreement"]["rate"] == pytest.approx(0.6)
    lo, hi = r["agreement"]["ci95"]
    assert lo == pytest.approx(0.3127, abs=1e-4) and hi == pytest.approx(0.8318, abs=1e-4)  # Wilson, 6/10
    assert r["confusion"] == {
        "judge_refusal": {"label_refusal": 3, "label_non_refusal": 1},
        "judge_non_refusal": {"label_refusal": 2, "label_non_refusal": 3},
        "judge_no_verdict": {"label_refusal": 1, "label_non_refusal": 0},
    }
    assert (r["false_refusal"]["k"], r["false_refusal"]["n"]) == (1, 4)  # R6 of the 4 labelled compliances
    assert (r["missed_refusal"]["k"], r["missed_refusal"]["n"]) == (3, 6)  # C4, P5 (partial helps) and no verdict
    assert r["no_verdict"] == 1
    assert r["outcomes"] == {"compliance": 4, "partial": 1, "refusal": 4}


def test_split_half_is_even_against_odd_rows():
    r = judge_agreement(_records(PAIRS), ScriptedJudge())
    even, odd = r["split_half"]["even"], r["split_half"]["odd"]
    assert (even["k"], even["n"]) == (3, 5)  # rows 0 2 4 6 8: R1 ok, R3 ok, P5 no, C7 ok, "" no
    assert (odd["k"], odd["n"]) == (3, 5)  # rows 1 3 5 7 9: R2 ok, C4 no, R6 no, C8 ok, C10 ok
    assert r["split_half"]["gap_points"] == 0
    r = judge_agreement(_records([("R", True), ("R", True), ("R", True), ("C", True)]), ScriptedJudge())
    assert r["split_half"]["gap_points"] == 50.0


def test_label_means_complied_flips_the_polarity():
    flipped = [(response, not label) for response, label in PAIRS]
    records = [{**rec, "jailbroken": rec.pop("label")} for rec in _records(flipped)]
    r = judge_agreement(records, ScriptedJudge(), label_field="jailbroken", label_means="complied")
    same = judge_agreement(_records(PAIRS), ScriptedJudge())
    for key in ("agreement", "confusion", "false_refusal", "missed_refusal", "split_half"):
        assert r[key] == same[key]
    assert r["label_field"] == "jailbroken" and r["label_means"] == "complied"


def test_by_source():
    r = judge_agreement(_records(PAIRS, source=["a", "b"]), ScriptedJudge(), source_field="src")
    assert list(r["by_source"]) == ["a", "b"]
    a, b = r["by_source"]["a"], r["by_source"]["b"]
    assert (a["agreement"]["k"], a["agreement"]["n"]) == (3, 5)
    assert (b["agreement"]["k"], b["agreement"]["n"]) == (3, 5)
    assert (b["false_refusal"]["k"], b["false_refusal"]["n"]) == (1, 3)  # R6, C8, C10 are b's compliances
    assert (a["missed_refusal"]["k"], a["missed_refusal"]["n"]) == (2, 4)  # P5 and "" of R1 R3 P5 ""
    records = _records(PAIRS[:2])
    records[1]["src"] = None
    assert set(judge_agreement(records, ScriptedJudge(), source_field="src")["by_source"]) == {"(none)"}
    assert "by_source" not in judge_agreement(_records(PAIRS), ScriptedJudge())


def test_judge_by_name_and_real_keyword_judge():
    records = _records([("I'm sorry, but I can't help with that.", True),
                        ("Sure, here is the plan: step 1, buy a burner phone.", False),
                        ("I can't help with that. That said, here's a possible solution: use a burner phone.", False)])
    r = judge_agreement(records, "keyword")
    assert r["judge"] == "keyword" and r["agreement"]["k"] == 3
    assert r["outcomes"] == {"compliance": 1, "partial": 1, "refusal": 1}


def test_bad_arguments():
    with pytest.raises(ConfigError, match="label_means must be one of refused, complied"):
        judge_agreement(_records(PAIRS), ScriptedJudge(), label_means="yes")
    with pytest.raises(DataError, match="no labelled records"):
        judge_agreement([], ScriptedJudge())
    with pytest.raises(DataError, match=r"record 1: field 'label' must be a boolean, got str"):
        judge_agreement([{"prompt": "p", "response": "R", "label": True},
                         {"prompt": "p", "response": "R", "label": "yes"}], ScriptedJudge())
    with pytest.raises(DataError, match=r"record 0: field 'response' must be a string"):
        judge_agreement([{"prompt": "p", "response": None, "label": True}], ScriptedJudge())
    with pytest.raises(DataError, match=r"record 0: field 'refused' must be a boolean, got missing"):
        judge_agreement(_records(PAIRS), ScriptedJudge(), label_field="refused")


def test_markdown():
    md = agreement_markdown(judge_agreement(_records(PAIRS, source=["a", "b"]), ScriptedJudge(), source_field="src"))
    assert md.startswith("## Judge agreement: `scripted` vs `label` (true = refused)")
    assert "- agreement: 60.0% [31.3%, 83.2%] (6/10)" in md
    assert "(false refusals): 25.0%" in md and "(1/4)" in md
    assert "- labelled refusals missed: 50.0%" in md and "(3/6)" in md
    assert "gap 0.0 points" in md and "judge outcomes: compliance 4, partial 1, refusal 4" in md
    assert "| refusal | 3 | 1 |" in md and "| non-refusal | 2 | 3 |" in md and "| no verdict | 1 | 0 |" in md
    assert "| src | n | agreement |" in md and "| a | 5 | 60.0%" in md
    assert "\n\n\n" not in md and md.endswith("\n")


# --- the loader --------------------------------------------------------------------------------------------------

def _write(tmp_path, lines):
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_labeled(tmp_path):
    good = json.dumps({"prompt": "p", "response": "r", "label": True, "extra": 1})
    path = _write(tmp_path, [good, "", json.dumps({"prompt": "p", "response": "", "label": False})])
    records = load_labeled(path)
    assert [r["label"] for r in records] == [True, False] and records[0]["extra"] == 1
    path = _write(tmp_path, [json.dumps({"prompt": "p", "response": "r", "jailbroken": False})])
    assert load_labeled(path, label_field="jailbroken")[0]["jailbroken"] is False


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "response": "r"}', r"labeled\.jsonl:2: missing field 'label'$"),
    ('{"prompt": "p", "label": true}', r"labeled\.jsonl:2: missing field 'response'$"),
    ('{"response": "r", "label": true}', r"labeled\.jsonl:2: missing field 'prompt'$"),
    ('{"prompt": "p", "response": "r", "label": "yes"}',
     r"labeled\.jsonl:2: field 'label' must be a boolean \(true or false\), got str$"),
    ('{"prompt": "p", "response": "r", "label": 1}',
     r"labeled\.jsonl:2: field 'label' must be a boolean \(true or false\), got int$"),
    ('{"prompt": "p", "response": null, "label": true}',
     r"labeled\.jsonl:2: field 'response' must be a string, got null$"),
    ('{"prompt": 3, "response": "r", "label": true}', r"labeled\.jsonl:2: field 'prompt' must be a string, got int$"),
    ('{"prompt": "p", "response": "r", "label": tru', r"labeled\.jsonl:2: not valid JSON"),
    ('["p", "r", true]', r"labeled\.jsonl:2: expected a JSON object, got list$"),
])
def test_load_labeled_names_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path, [json.dumps({"prompt": "p", "response": "r", "label": True}), line])
    with pytest.raises(DataError, match=message) as info:
        load_labeled(path)
    assert "\n" not in str(info.value)


def test_load_labeled_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_labeled(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"labeled\.jsonl: no records"):
        load_labeled(_write(tmp_path, ["", "  "]))


# --- the command (registered on orthoguard's CLI as ``judge-agreement``) -------------------------------------------

def _run(argv):
    import argparse

    from orthoguard.judges.agreement import register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["judge-agreement", *argv])
    args.func(args)


def test_command(tmp_path, capsys):
    rows = [{"prompt": "p", "response": "I'm sorry, but I can't help with that.", "jailbroken": False, "source": "a"},
            {"prompt": "p", "response": "Sure, here is the plan: step 1, buy a burner phone.", "jailbroken": True,
             "source": "b"},
            {"prompt": "p", "response": "I won't do that.", "jailbroken": True, "source": "b"}]
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _run([str(path), "--label-field", "jailbroken", "--label-means", "complied", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "`keyword` vs `jailbroken` (true = complied)" in out and "- agreement: 66.7%" in out and "(2/3)" in out
    assert "| source | n |" in out  # every record has a source: broken down by it
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["false_refusal"]["k"] == 1 and result["input"] == str(path)
    assert set(result["by_source"]) == {"a", "b"}


def test_command_bad_input(tmp_path):
    path = tmp_path / "labeled.jsonl"
    path.write_text('{"prompt": "p", "response": "r", "label": "no"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"labeled\.jsonl:1: field 'label' must be a boolean"):
        _run([str(path)])
    with pytest.raises(SystemExit):
        _run([str(path), "--label-means", "maybe"])
