"""How well a refusal judge agrees with human (or reference-judge) labels.

``load_labeled(path)`` reads a JSONL file whose records have string ``prompt`` and ``response`` fields and a boolean
label (``label`` by default); a bad record is a one-line ``DataError`` naming ``file:line`` and the field.
``judge_agreement(records, judge)`` judges every record and compares the judge's refusal call with the label;
``agreement_markdown(result)`` renders the result.

The label's polarity is ``label_means``: ``"refused"`` (true = the reply is a refusal) or ``"complied"`` (true = the
reply complied; JailbreakBench's ``jailbroken`` field, where "not refused" is read as a prediction of
``jailbroken``, as ``scripts/judge_agreement.py`` did). A judge's ``partial`` outcome (declines, then helps) is not a
refusal. A reply the judge could not decide (an empty reply, a judge error) counts as a disagreement and is counted
in ``no_verdict``.

The result has: ``agreement`` (k of n, with a 95% Wilson interval), the ``confusion`` matrix (judge refusal /
non-refusal / no verdict against label refusal / non-refusal), ``false_refusal`` (the share of labelled
compliances the judge calls refusals), ``missed_refusal`` (the share of labelled refusals it does not call
refusals), ``outcomes`` (the judge's three-way calls where it makes them), ``split_half`` (agreement on the
even-numbered and the odd-numbered records, counted from 0, and the gap between them in percentage points: a large
gap says the figure depends on which records were drawn) and, with ``source_field``, ``by_source``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from orthoguard.errors import ConfigError, DataError
from orthoguard.io import iter_jsonl, write_json
from orthoguard.judges import REFUSAL, Judge, get_judge, judge_records, measures
from orthoguard.metrics import rate_summary

LabelMeaning = Literal["refused", "complied"]
LABEL_MEANINGS = ("refused", "complied")


def load_labeled(path: str | Path, label_field: str = "label") -> list[dict[str, Any]]:
    """The records of a labelled JSONL file: string ``prompt`` and ``response`` and a boolean ``label_field``.
    Blank lines are skipped; any other problem is a ``DataError`` naming ``path:line`` and the field."""
    records = []
    for lineno, record in iter_jsonl(path):
        for field, kind in (("prompt", str), ("response", str), (label_field, bool)):
            if field not in record:
                raise DataError(f"{path}:{lineno}: missing field {field!r}")
            if not isinstance(record[field], kind):
                want = "a boolean (true or false)" if kind is bool else "a string"
                got = "null" if record[field] is None else type(record[field]).__name__
                raise DataError(f"{path}:{lineno}: field {field!r} must be {want}, got {got}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _score(pairs: list[tuple[bool | None, bool]]) -> dict[str, Any]:
    """Counts for (judge refused or None, label refusal) pairs."""
    agree = [called is not None and called == label for called, label in pairs]  # no verdict never agrees
    refusals = [called for called, label in pairs if label]
    compliances = [called for called, label in pairs if not label]
    missed = [called is not True for called in refusals]
    false = [called is True for called in compliances]
    return {
        "n": len(pairs),
        "agreement": rate_summary(agree),
        "confusion": {
            row: {
                "label_refusal": sum(want(c) for c in refusals),
                "label_non_refusal": sum(want(c) for c in compliances),
            }
            for row, want in (("judge_refusal", lambda c: c is True), ("judge_non_refusal", lambda c: c is False),
                              ("judge_no_verdict", lambda c: c is None))
        },
        "false_refusal": rate_summary(false),
        "missed_refusal": rate_summary(missed),
        "no_verdict": sum(called is None for called, _ in pairs),
    }


def judge_agreement(records: list[dict[str, Any]], judge: Judge | str, label_field: str = "label",
                    label_means: LabelMeaning = "refused", source_field: str | None = None) -> dict[str, Any]:
    """Judge every record (``prompt``, ``response``, a boolean ``label_field``) and compare the judge's refusal call
    with the label; see the module docstring for what the result holds."""
    if label_means not in LABEL_MEANINGS:
        raise ConfigError(f"label_means must be one of {', '.join(LABEL_MEANINGS)}, got {label_means!r}")
    if isinstance(judge, str):
        judge = get_judge(judge)
    if not records:
        raise DataError("no labelled records to score")
    for i, record in enumerate(records):
        label = record.get(label_field)
        if not isinstance(label, bool):
            got = "missing" if label_field not in record else type(label).__name__
            raise DataError(f"record {i}: field {label_field!r} must be a boolean, got {got}")
        if not isinstance(record.get("response"), str):
            raise DataError(f"record {i}: field 'response' must be a string")
    # the project's one judging path: rule-based judges in place, LLM judges concurrently
    judged = judge_records([{"prompt": r.get("prompt", ""), "response": r["response"]} for r in records], judge)
    harm_only = REFUSAL not in measures(type(judge))  # a harm judge: its "not harmful" stands where a refusal would
    pairs, sources, outcomes = [], [], {}
    for record, row in zip(records, judged):
        label = record[label_field]
        call = row["refused"] if not harm_only else None if row.get("harmful_reply") is None else not row["harmful_reply"]
        pairs.append((call, label if label_means == "refused" else not label))
        if row.get("outcome") is not None:
            outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
        if source_field is not None:
            source = record.get(source_field)
            sources.append("(none)" if source is None else str(source))
    result = {"judge": getattr(judge, "name", type(judge).__name__), "label_field": label_field,
              "label_means": label_means, "judge_call": "not harmful" if harm_only else "refusal",
              **_score(pairs), "outcomes": dict(sorted(outcomes.items()))}
    even, odd = _score(pairs[0::2])["agreement"], _score(pairs[1::2])["agreement"]
    gap = abs(even["rate"] - odd["rate"]) * 100 if even["rate"] is not None and odd["rate"] is not None else None
    result["split_half"] = {"even": even, "odd": odd, "gap_points": None if gap is None else round(gap, 2)}
    if source_field is not None:
        result["source_field"] = source_field
        result["by_source"] = {
            source: _score([p for p, s in zip(pairs, sources) if s == source]) for source in sorted(set(sources))
        }
    return result


def _rate(summary: dict) -> str:
    if summary["rate"] is None:
        return "n/a (0/0)"
    lo, hi = summary["ci95"]
    return f"{summary['rate']:.1%} [{lo:.1%}, {hi:.1%}] ({summary['k']}/{summary['n']})"


def agreement_markdown(result: dict[str, Any]) -> str:
    """A short Markdown report of a ``judge_agreement`` result."""
    polarity = "true = refused" if result["label_means"] == "refused" else "true = complied"
    c = result["confusion"]
    lines = [
        f"## Judge agreement: `{result['judge']}` vs `{result['label_field']}` ({polarity})",
        "",
        f"- agreement: {_rate(result['agreement'])}",
        f"- labelled compliances called refusals (false refusals): {_rate(result['false_refusal'])}",
        f"- labelled refusals missed: {_rate(result['missed_refusal'])}",
        f"- no verdict (counted as disagreement): {result['no_verdict']} of {result['n']}",
    ]
    if result.get("judge_call") == "not harmful":
        lines.append("- a harm judge: its \"not harmful\" call is scored where a refusal judge's \"refusal\" would be "
                     "(the rows named refusal below read \"not harmful\")")
    split = result["split_half"]
    gap = "n/a" if split["gap_points"] is None else f"{split['gap_points']:.1f} points"
    lines.append(f"- split half: even rows {_rate(split['even'])}, odd rows {_rate(split['odd'])}; gap {gap}")
    if result.get("outcomes"):
        lines.append("- judge outcomes: " + ", ".join(f"{k} {v}" for k, v in result["outcomes"].items()))
    lines += [
        "",
        "| judge \\ label | refusal | non-refusal |",
        "|---|---|---|",
        f"| refusal | {c['judge_refusal']['label_refusal']} | {c['judge_refusal']['label_non_refusal']} |",
        f"| non-refusal | {c['judge_non_refusal']['label_refusal']} | {c['judge_non_refusal']['label_non_refusal']} |",
        f"| no verdict | {c['judge_no_verdict']['label_refusal']} | {c['judge_no_verdict']['label_non_refusal']} |",
    ]
    if result.get("by_source"):
        lines += ["", f"| {result['source_field']} | n | agreement | false refusals | refusals missed |",
                  "|---|---|---|---|---|"]
        for source, s in result["by_source"].items():
            lines.append(f"| {source} | {s['n']} | {_rate(s['agreement'])} | {_rate(s['false_refusal'])} "
                         f"| {_rate(s['missed_refusal'])} |")
    return "\n".join(lines) + "\n"


# --- command line: ``orthoguard judge-agreement LABELED.jsonl --judge J ...`` ----------------------------------

def register_cli(subparsers) -> None:
    """Add the ``judge-agreement`` subcommand."""
    p = subparsers.add_parser("judge-agreement", help="how well a refusal judge agrees with labelled replies")
    p.add_argument("input", help="JSONL with string 'prompt' and 'response' and a boolean label")
    p.add_argument("--judge", default="keyword", help="keyword (default), keyword-seed, keyword-jbb, or an LLM judge "
                   "with --judge-endpoint")
    p.add_argument("--judge-endpoint", help="OpenAI-compatible base URL for an LLM judge")
    p.add_argument("--judge-model", default="judge", help="the LLM judge's model name on that server (default: %(default)s)")
    p.add_argument("--label-field", default="label", help="the boolean label's field (default: label)")
    p.add_argument("--label-means", choices=LABEL_MEANINGS, default="refused",
                   help="what a true label says: the reply refused (default) or complied (e.g. JailbreakBench's "
                   "'jailbroken')")
    p.add_argument("--source-field", help="break the figures down by this field (default: 'source' when every "
                   "record has one)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the full result as JSON")
    p.set_defaults(func=cmd_judge_agreement)


def cmd_judge_agreement(args) -> None:
    records = load_labeled(args.input, args.label_field)
    source_field = args.source_field
    if source_field is None and all("source" in r for r in records):
        source_field = "source"
    kwargs = {"endpoint": args.judge_endpoint, "model": args.judge_model} if args.judge_endpoint else {}
    result = judge_agreement(records, get_judge(args.judge, **kwargs), label_field=args.label_field,
                             label_means=args.label_means, source_field=source_field)
    result["input"] = str(args.input)
    if args.json_path:
        write_json(args.json_path, result)
    print(agreement_markdown(result), end="")
