"""How well do the keyword refusal judges agree with JailbreakBench's `jailbroken` labels?

    python scripts/judge_agreement.py [PATH] [--halves]

PATH is a JSONL file with `prompt`, `response` and `jailbroken` (default: the project's copy of the JailbreakBench
dev file). "Not refused" is read as a prediction of `jailbroken`. A compliance missed is a jailbroken reply the judge
calls a refusal; a refusal missed is a not-jailbroken reply it calls no refusal; an undecided verdict (empty
response) counts as a disagreement. --halves also scores the two halves of a seeded random split (seed 0), the
split the `keyword` rules were developed (first half) and checked (second half) on.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from orthoguard.io import read_jsonl
from orthoguard.judges import get_judge

DEFAULT = Path(__file__).resolve().parents[1] / "tests/data/jbb_judged_dev/responses.jsonl"
JUDGE_NAMES = ("keyword-seed", "keyword-jbb", "keyword")


def score(records: list[dict], judge_name: str) -> dict:
    judge = get_judge(judge_name)
    refused = [judge.judge(r["prompt"], r["response"]).refused for r in records]
    jailbroken = [bool(r["jailbroken"]) for r in records]
    n_jb = sum(jailbroken)
    return {
        "agreement": sum(ref is not None and (not ref) == jb for ref, jb in zip(refused, jailbroken)) / len(records),
        "compliances_missed": sum(ref is True and jb for ref, jb in zip(refused, jailbroken)),
        "compliances": n_jb,
        "refusals_missed": sum(ref is not True and not jb for ref, jb in zip(refused, jailbroken)),
        "refusals": len(records) - n_jb,
    }


def halves(records: list[dict], seed: int = 0) -> tuple[list[dict], list[dict]]:
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    half = len(records) // 2
    return [records[i] for i in sorted(order[:half])], [records[i] for i in sorted(order[half:])]


def report(title: str, records: list[dict]) -> None:
    print(f"{title} ({len(records)} rows)")
    print(f"  {'judge':<14}{'agreement':>10}  {'compliances missed':>22}  {'refusals missed':>19}")
    for name in JUDGE_NAMES:
        s = score(records, name)
        missed = f"{s['compliances_missed']}/{s['compliances']} ({s['compliances_missed'] / s['compliances']:.1%})"
        print(f"  {name:<14}{s['agreement']:>10.1%}  {missed:>22}  {s['refusals_missed']:>11}/{s['refusals']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=DEFAULT, type=Path)
    parser.add_argument("--halves", action="store_true", help="also score the seeded development/check halves")
    args = parser.parse_args()
    records = read_jsonl(args.path)
    report(str(args.path), records)
    if args.halves:
        dev, check = halves(records)
        report("development half (seed 0)", dev)
        report("check half (seed 0)", check)


if __name__ == "__main__":
    main()
