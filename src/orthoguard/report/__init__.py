"""A run's outputs as a report to look at: ``RUN_DIR/report/index.html`` (self-contained) and ``report.md``.

Reads only what a run wrote (``config.resolved.yaml``, ``stages.json``, ``logs/training_loss_*.json``,
``results/summary.json``), never a model. A multi-seed root (``seeds.json`` + ``seed-<s>/`` run directories) is
aggregated: rates pooled over seeds with a Wilson interval, mean ± std and per-seed values beside them.

Every section is built from the numbers; a section whose inputs are absent becomes a one-line note. The verdict
compares, on each harmful prompt set, the undefended attack (vanilla) with the ceiling (``aligned``, or ``base``
when the attack targets base) and each defended attack variant with vanilla and with its two random controls:
``same_rank`` (random directions with the family's keys, shapes and ranks) and ``matched`` (a random constraint
that removes the same share of the update norm as the defence). Every one of these comparisons that has an exact
McNemar test in the results, over all harmful sets, forms one family; its p-values are Holm–Bonferroni corrected:

- "beats": the corrected p < 0.05 and the rate (and the discordant pairs) are higher, and, over several seeds,
  the rate is higher in every seed;
- "refuses less than": the same, lower;
- otherwise "is not distinguishable from" (also when the results hold no paired test). Whether the 95%
  intervals overlap is shown, but decides nothing.

A defended variant is said to protect refusal only if it beats vanilla and both of its random controls; one that
beats vanilla but not both (or lacks a control) is said not to be claimable. A model whose replies got no verdict
(empty, unfinished, unjudgeable) on more than 10% of a set is flagged: its rate and paired tests are over fewer
prompts.

The content is a list of blocks (heading, paragraph, list, table, image, note) rendered twice, to HTML and to
Markdown, so both files say the same thing. Plots use matplotlib's Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

import time
from pathlib import Path

from orthoguard.errors import DataError
from orthoguard.io import atomic_path, write_text
from orthoguard.report.constants import (ALPHA, BENIGN_NAME, CAUTION_WIDTH, CONTROL_KINDS, CONTROL_LABELS,
                                         CONTROL_MISSING, CONTROL_ROLES, FIXED_COLORS, MATCH_TOLERANCE,
                                         NO_VERDICT_FLAG, NOT_VARIANTS, PALETTE, STEP_KEYS)
from orthoguard.report.experiment import Experiment, random_kind
from orthoguard.report.formatting import fmt_no_verdict, fmt_num, fmt_p, fmt_rate, fmt_spread, fmt_summary, pct
from orthoguard.report.load import RunData, load_run, load_runs
from orthoguard.report.plots import (PLOTS, plot_blocks, plot_refusal_decay, plot_refusal_rates,
                                     plot_step_diagnostics, plot_tradeoff, plot_training_loss)
from orthoguard.report.render import CSS, Block, note, render_html, render_markdown
from orthoguard.report.stats import Rate
from orthoguard.report.tables import decay_table, diagnostics_table, harm_table, main_table, mcnemar_table, seed_table, training_table
from orthoguard.report.verdict import verdict_blocks
from orthoguard.report.worst_case import worst_case_table

__all__ = [
    # the report and its command line
    "build_report", "report_blocks", "header_line", "cmd_report", "register_cli",
    # load
    "RunData", "load_run", "load_runs",
    # stats and experiment
    "Rate", "Experiment", "random_kind",
    # verdict, tables, plots, rendering
    "verdict_blocks", "main_table", "harm_table", "decay_table", "mcnemar_table", "seed_table", "training_table", "diagnostics_table",
    "PLOTS", "plot_blocks", "plot_training_loss", "plot_refusal_rates", "plot_refusal_decay", "plot_tradeoff",
    "plot_step_diagnostics", "Block", "note", "CSS", "render_html", "render_markdown",
    # formatting
    "pct", "fmt_rate", "fmt_no_verdict", "fmt_spread", "fmt_p", "fmt_num", "fmt_summary",
    # constants
    "NOT_VARIANTS", "BENIGN_NAME", "ALPHA", "NO_VERDICT_FLAG", "MATCH_TOLERANCE", "CONTROL_KINDS", "CONTROL_LABELS",
    "CONTROL_ROLES", "CONTROL_MISSING", "CAUTION_WIDTH", "STEP_KEYS", "FIXED_COLORS", "PALETTE",
]


# ---------------------------------------------------------------------------------------------------------
# The report


def stale_blocks(exp: Experiment) -> list[Block]:
    """First of all, what the report does not show because the run directory's files are not this config's."""
    stale = [f"{name} ({reason})" + (f", seed {r.seed}" if exp.multi else "")
             for r in exp.runs for name, reason in r.stale.items()]
    if not stale:
        return []
    return [Block("heading", "Stale stages: not shown"),
            Block("para", "These stages' outputs were made by another config or from other inputs than the run's "
                          "config.resolved.yaml; their logs and results are left out of everything below. "
                          "`orthoguard run` with that config reruns exactly what changed."),
            Block("list", items=stale)]


def report_blocks(exp: Experiment) -> list[Block]:
    blocks = stale_blocks(exp)
    try:
        blocks += verdict_blocks(exp)
    except Exception as exc:  # never lose the tables and plots to a verdict bug or an odd field
        blocks += [Block("heading", "Verdict"), note(f"No verdict: {exc.__class__.__name__}: {exc}")]
    blocks += plot_blocks(exp)  # the picture right after the answer; the long tables after it
    blocks.append(Block("heading", "Tables"))
    for fn in (main_table, harm_table, decay_table, worst_case_table, mcnemar_table, seed_table, training_table,
               diagnostics_table):
        try:
            blocks += fn(exp)
        except Exception as exc:  # a malformed field must not sink the whole report
            blocks.append(note(f"{fn.__name__}: not built ({exc.__class__.__name__}: {exc})"))
    if exp.notes:
        blocks.append(Block("heading", "Notes"))
        blocks.append(Block("list", items=exp.notes))
    return blocks


def header_line(exp: Experiment) -> str:
    parts = [f"run {exp.name}", f"model {exp.model_name or 'unknown'}", f"attack target {exp.target}",
             f"finished {exp.date or 'unknown'}", f"refusal judge {exp.judge or 'unknown'}"]
    if exp.harm_judge:
        parts.append(f"harm judge {exp.harm_judge}")
    parts.append(f"seeds {', '.join(map(str, exp.seeds))}" if exp.multi else f"seed {exp.seeds[0] if exp.seeds else '?'}")
    parts.append(f"computed with {exp.versions_label}")
    parts.append(f"report written {time.strftime('%Y-%m-%d %H:%M')}")
    return " · ".join(parts)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``<run_dir>/report/{index.html, report.md, *.png}`` and return the path of index.html.

    ``run_dir`` is one run directory or a multi-seed root (``seeds.json``). Raises ``DataError`` when it holds
    neither results nor training logs."""
    root = Path(run_dir)
    runs, notes = load_runs(root)
    if not any(r.summary or r.logs for r in runs):
        raise DataError(f"{root}: no results/summary.json and no logs/training_loss_*.json: nothing to report")
    exp = Experiment(root, runs, notes)
    blocks = report_blocks(exp)
    title = f"orthoguard report: {exp.name}"
    meta = header_line(exp)
    out = Path(out_dir) if out_dir else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = set()
    for b in blocks:
        if b.kind == "image":
            with atomic_path(out / b.file) as tmp:
                tmp.write_bytes(b.image)
            written.add(b.file)
    for stale in out.glob("*.png"):  # plots of an earlier report that this one skipped
        if stale.name not in written and stale.name in {f for f, _, _ in PLOTS}:
            stale.unlink()
    write_text(out / "report.md", render_markdown(title, meta, blocks))
    index = out / "index.html"
    write_text(index, render_html(title, meta, blocks))
    return index


# ---------------------------------------------------------------------------------------------------------
# Command line


def cmd_report(args) -> None:
    index = build_report(args.run_dir, args.out)
    print(f"report -> {index}")


def register_cli(subparsers) -> None:
    """Add the ``report`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("report", help="HTML + Markdown report with plots of a run directory (or a multi-seed root)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or a root with seeds.json and seed-<s>/ folders")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)
