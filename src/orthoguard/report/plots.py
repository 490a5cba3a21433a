"""The report's plots: matplotlib Figure objects on the Agg canvas (no pyplot, no display), as PNG blocks."""

from __future__ import annotations

import io

from orthoguard.metrics import seed_summary
from orthoguard.report.constants import CONTROL_ROLES, PALETTE, STEP_KEYS
from orthoguard.report.experiment import Experiment
from orthoguard.report.render import Block, note


def _figure(width: float = 8.0, height: float = 4.2, ncols: int = 1, nrows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _legend_below(fig, ax) -> None:
    """The legend under the plot, outside the axes: with many variants it would cover the curves."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.set_figheight(fig.get_figheight() + 0.22 * ((len(labels) + 1) // 2))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _seed_styles(exp: Experiment) -> dict:
    styles = ["-", "--", ":", "-."]
    return {s: styles[i % len(styles)] for i, s in enumerate(exp.seeds)}


def by_harmful_ratio(exp: Experiment) -> dict[float, list[str]]:
    """The attack variants by their harmful ratio p, in increasing p (one plot panel each)."""
    out: dict[float, list[str]] = {}
    for m in exp.variants:
        out.setdefault(exp.harmful_ratio(m), []).append(m)
    return dict(sorted(out.items()))


def plot_training_loss(exp: Experiment):
    """Training loss of every attack variant (one line per seed), one panel per harmful ratio."""
    panels = by_harmful_ratio(exp)
    fig, axes = _figure(5.0 * len(panels) + 1.0 if len(panels) > 1 else 8.0, 4.2, ncols=len(panels))
    styles, drawn = _seed_styles(exp), 0
    for ax, (ratio, models) in zip(axes, panels.items()):
        for m in models:
            for i, (seed, log) in enumerate(exp.step_logs(m)):
                pts = [(x.step, x.loss) for x in log.losses]
                if not pts:
                    continue
                label = m + (f" (seed {seed})" if exp.multi and len(exp.seeds) <= 4 else "") if (i == 0 or len(exp.seeds) <= 4) else None
                ax.plot(*zip(*pts), color=exp.colors[m], linestyle=styles.get(seed, "-"), lw=1.4, alpha=0.9,
                        label=label, marker="." if len(pts) < 30 else None)
                drawn += 1
        ax.set(xlabel="optimizer step", ylabel="training loss",
               title="Attack training loss" + (f", harmful ratio p = {ratio:g}" if len(panels) > 1 else ""))
        if len(panels) > 1:
            ax.legend(fontsize=6)
    if not drawn:
        return None, "Training loss: no attack variant has a loss log yet."
    if len(panels) == 1:
        _legend_below(fig, axes[0])
    return fig, None


def plot_refusal_rates(exp: Experiment):
    """Refusal rate per model and prompt set, with 95% interval bars (per-seed rates as small dots)."""
    if not exp.models or not exp.sets:
        return None, "Refusal rates: results/summary.json is absent."
    sets = exp.harmful_sets + exp.benign_sets + [s for s in exp.sets if s not in exp.harmful_sets + exp.benign_sets]
    fig, (ax,) = _figure(max(8.0, 0.8 * len(exp.models) * max(1, len(sets)) / 1.6 + 3), 4.6)
    width = 0.8 / len(sets)
    markers = ["o", "s", "^", "D", "v", "P"]
    drawn = 0
    for j, s in enumerate(sets):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(exp.models):
            r = exp.rate(m, s)
            if r is None or r.rate is None:
                continue
            x = i + (j - (len(sets) - 1) / 2) * width
            xs.append(x)
            ys.append(100 * r.rate)
            lo.append(100 * (r.rate - r.ci95[0]) if r.ci95 else 0)
            hi.append(100 * (r.ci95[1] - r.rate) if r.ci95 else 0)
            if exp.multi:
                ax.scatter([x] * len(r.per_seed), [100 * v for v in r.per_seed.values()], s=10, color="#555555", zorder=3)
        if not xs:
            continue
        drawn += len(xs)
        role = "harmful" if s in exp.harmful_sets else "benign" if s in exp.benign_sets else "other"
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt=markers[j % len(markers)], capsize=4, ms=7, label=f"{s} ({role})",
                    color=PALETTE[j % len(PALETTE)])
    if not drawn:
        return None, "Refusal rates: no model has a decided rate (see the judge errors)."
    ax.set_xticks(range(len(exp.models)), exp.models, rotation=20, ha="right")
    ax.set(ylabel="refusal rate (%)", ylim=(-3, 103), title="Refusal rate per model and prompt set (95% interval)")
    ax.legend(fontsize=8)
    return fig, None


def _decay_series(exp: Experiment, m: str):
    """A variant's probe curve: (steps, refusal %, band low %, band high %), the band the 95% interval of one seed
    or mean ± std over seeds; None without probes, "undecided" when no probe had a decided verdict."""
    curves = [log.probes for _, log in exp.step_logs(m) if log.probes]
    if not curves:
        return None
    by_step: dict[int, list] = {}
    for probes in curves:
        for p in probes:
            if p.refusal_rate is not None:
                by_step.setdefault(p.step, []).append(p)
    steps = sorted(by_step)
    if not steps:
        return "undecided"
    mean = [100 * sum(p.refusal_rate for p in by_step[s]) / len(by_step[s]) for s in steps]
    if len(curves) == 1:
        return steps, mean, [100 * by_step[s][0].ci95[0] for s in steps], [100 * by_step[s][0].ci95[1] for s in steps]
    sd = [100 * (seed_summary([p.refusal_rate for p in by_step[s]])["std"] or 0.0) for s in steps]
    return steps, mean, [a - b for a, b in zip(mean, sd)], [a + b for a, b in zip(mean, sd)]


def _draw_decay(ax, exp: Experiment, m: str, series, color: str | None = None) -> None:
    steps, mean, lo, hi = series
    color = color or exp.colors[m]
    kind = exp.variants[m].get("random")
    ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
    ax.plot(steps, mean, color=color, marker="o", ms=4, lw=1.6, label=m + _control_suffix(kind), **_control_style(kind))


def _decay_title(exp: Experiment) -> str:
    n = sorted({p.n for m in exp.variants for _, log in exp.step_logs(m) for p in log.probes or [] if p.n})
    band = "mean ± std over seeds" if exp.multi else "95% interval"
    return f"Refusal decay during the attack ({band}; probe n = {', '.join(map(str, n)) or '?'})"


def plot_refusal_decay(exp: Experiment):
    """Probe refusal rate against attack training step: the refusal-decay curve. With several defences, one panel
    per defence and attack condition (the defence, its random controls in its colour, the undefended attack of the
    same condition in black); else every variant on one axis."""
    series = {m: _decay_series(exp, m) for m in exp.variants}
    drawn = {m: s for m, s in series.items() if s not in (None, "undecided")}
    if not drawn:
        if "undecided" in series.values():
            return None, "Refusal decay: the probes have no decided verdict (every probe response was a judge error)."
        return None, "Refusal decay: the attack logs have no 'probes' (set attack.probe_every to record them)."
    groups = [(vanilla, [d for d in defences if d in drawn]) for vanilla, defences in exp.attack_groups()]
    groups = [(vanilla, defences) for vanilla, defences in groups if defences]
    if sum(len(d) for _, d in groups) < 2:
        fig, (ax,) = _figure()
        for m, s in drawn.items():
            _draw_decay(ax, exp, m, s)
        ax.set(xlabel="attack optimizer step", ylabel="probe refusal rate (%)", ylim=(-3, 103), title=_decay_title(exp))
        _legend_below(fig, ax)
        return fig, None
    ncols = max(len(d) for _, d in groups)
    fig, axes = _figure(3.4 * ncols + 0.4, 3.0 * len(groups) + 0.6, ncols=ncols, nrows=len(groups))
    for row, (vanilla, defences) in enumerate(groups):
        for col in range(ncols):
            ax = axes[row * ncols + col]
            if col >= len(defences):
                ax.set_visible(False)
                continue
            defence = defences[col]
            if vanilla in drawn:
                _draw_decay(ax, exp, vanilla, drawn[vanilla], color="#222222")
            _draw_decay(ax, exp, defence, drawn[defence])
            for control in exp.controls.get(defence, {}).values():
                if control in drawn:
                    _draw_decay(ax, exp, control, drawn[control], color=exp.colors[defence])
            ax.set(ylim=(-3, 103), title=f"{defence} ({exp.condition_words(defence)})")
            ax.title.set_fontsize(9)
            ax.legend(fontsize=6, loc="lower left")
            if row == len(groups) - 1:
                ax.set_xlabel("attack optimizer step")
            if col == 0:
                ax.set_ylabel("probe refusal (%)")
    fig.suptitle(_decay_title(exp), fontsize=10)
    return fig, None


def _control_suffix(kind: str | None) -> str:
    return f" (random control, {CONTROL_ROLES.get(kind, kind)})" if kind else ""


def _control_style(kind: str | None) -> dict:
    """Solid for attacks; hollow markers for random controls: dashed (same rank), dotted (matched), dash-dot (other)."""
    if not kind:
        return dict(linestyle="-")
    dashes = {"same_rank": (0, (5, 3)), "matched": (0, (1, 2))}.get(kind, "-.")
    return dict(linestyle=dashes, mfc="white")


def plot_tradeoff(exp: Experiment):
    """Over-refusal (x) against refusal (y), one point per model: up and to the left is better."""
    if not exp.harmful_sets or not exp.benign_sets:
        return None, "Safety/utility trade-off: needs both a harmful and a benign prompt set in the results."
    hs, bs = exp.harmful_sets[0], exp.benign_sets[0]
    references = [m for m in exp.models if m not in exp.variants]  # base, aligned: in every panel
    panels = {ratio: references + [m for m in models if m in exp.models]
              for ratio, models in by_harmful_ratio(exp).items()} or {None: list(exp.models)}
    fig, axes = _figure(5.6 * len(panels) + 1.2, 5.2, ncols=len(panels))
    drawn = 0
    for ax, (ratio, models) in zip(axes, panels.items()):
        labelled = []
        for m in models:
            rh, rb = exp.rate(m, hs), exp.rate(m, bs)
            if rh is None or rb is None or rh.rate is None or rb.rate is None:
                continue
            point = (100 * rb.rate, 100 * rh.rate)
            ax.errorbar([point[0]], [point[1]], xerr=_err(rb), yerr=_err(rh), fmt="o", ms=7, capsize=3,
                        color=exp.colors.get(m, "#333333"), alpha=0.85, label=m)
            ax.annotate(m, point, textcoords="offset points", xytext=(6, 6 + 10 * _near(point, labelled)), fontsize=7)
            labelled.append(point)
            drawn += 1
        title = "Safety vs over-refusal (95% intervals)" if len(panels) == 1 else f"harmful ratio p = {ratio:g}"
        ax.set(xlabel=f"over-refusal on {bs} (%)", ylabel=f"refusal on {hs} (%)", xlim=(-3, 103), ylim=(-3, 103),
               title=title)
        if len(panels) == 1:
            ax.legend(fontsize=8, loc="lower right")
    if not drawn:
        return None, "Safety/utility trade-off: no model has rates on both sets."
    return fig, None


def plot_refusal_vs_fa(exp: Experiment):
    """The field's two numbers for every attack variant, one panel per harmful ratio p: fine-tune accuracy on the
    benign task (x; did the user get a useful model?) against refusal on the first harmful set (y; did the model keep
    refusing?). Top right is what a defence wants; the aligned model's refusal is the dashed line."""
    task = exp.fa_task
    if not task:
        return None, "Refusal vs fine-tune accuracy: the run has no benign task (attack.benign_task)."
    if not exp.harmful_sets:
        return None, "Refusal vs fine-tune accuracy: no harmful prompt set in the results."
    hs = exp.harmful_sets[0]
    by_ratio = by_harmful_ratio(exp)
    fig, axes = _figure(4.6 * len(by_ratio) + 0.6, 4.6, ncols=len(by_ratio))
    drawn = 0
    ceiling = exp.rate(exp.ceiling, hs)
    for ax, (ratio, models) in zip(axes, by_ratio.items()):
        labelled = []
        for m in models:
            fa, r = exp.fine_tune_accuracy(m), exp.rate(m, hs)
            if fa is None or r is None or fa.rate is None or r.rate is None:
                continue
            point = (100 * fa.rate, 100 * r.rate)
            ax.errorbar([point[0]], [point[1]], xerr=_err(fa), yerr=_err(r), fmt="o", ms=7, capsize=3,
                        color=exp.colors.get(m, "#333333"), alpha=0.85)
            ax.annotate(m, point, textcoords="offset points", xytext=(6, 6 + 10 * _near(point, labelled)), fontsize=8)
            labelled.append(point)
            drawn += 1
        if ceiling is not None and ceiling.rate is not None:
            ax.axhline(100 * ceiling.rate, color="#888888", linestyle="--", lw=1)
        ax.set(xlabel=f"fine-tune accuracy on {task} (%)", ylabel=f"refusal on {hs} (%)", xlim=(-3, 103),
               ylim=(-3, 103), title=f"harmful ratio p = {ratio:g}")
    if not drawn:
        return None, "Refusal vs fine-tune accuracy: no attack variant has both numbers."
    return fig, None


def _err(r) -> list[list[float]] | None:
    return [[100 * (r.rate - r.ci95[0])], [100 * (r.ci95[1] - r.rate)]] if r.ci95 else None


def _near(point: tuple[float, float], labelled: list[tuple[float, float]], within: float = 4.0) -> int:
    """How many already-labelled points lie within ``within`` points of ``point``: the label goes that many lines
    up, so that models with (nearly) the same rates get stacked labels instead of labels on top of each other."""
    return sum(abs(point[0] - x) < within and abs(point[1] - y) < within for x, y in labelled)


def plot_step_diagnostics(exp: Experiment):
    """Per-step projection diagnostics (share of the gradient/update removed, regularizer penalty)."""
    present = [k for k in STEP_KEYS if any(getattr(x, k, None) is not None for m in exp.variants
                                           for _, log in exp.step_logs(m) for x in log.losses)]
    if not present:
        return None, "Projection diagnostics over steps: no variant logged grad_removed_frac, update_removed_frac or reg_penalty."
    fig, axes = _figure(4.2 * len(present) + 1, 4.0, ncols=len(present))
    styles = _seed_styles(exp)
    for ax, key in zip(axes, present):
        for m in exp.variants:
            for i, (seed, log) in enumerate(exp.step_logs(m)):
                pts = [(x.step, getattr(x, key)) for x in log.losses if getattr(x, key, None) is not None]
                if pts:
                    ax.plot(*zip(*pts), color=exp.colors[m], linestyle=styles.get(seed, "-"), lw=1.4,
                            label=m if i == 0 else None, marker="." if len(pts) < 30 else None)
        ax.set(xlabel="optimizer step", ylabel=STEP_KEYS[key], title=key)
        if key.endswith("_frac"):
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    return fig, None


PLOTS = [
    ("training_loss.png", plot_training_loss, "Training loss of every attack variant (line style: seed)."),
    ("refusal_rates.png", plot_refusal_rates, "Refusal rate per model and prompt set; bars: 95% Wilson interval"
                                              " (pooled over seeds; dots: single seeds)."),
    ("refusal_decay.png", plot_refusal_decay, "Refusal on a small fixed probe set during the attack: a defense that "
                                              "holds stays up; hollow markers: random controls (dashed: same rank, "
                                              "dotted: matched removed share)."),
    ("tradeoff.png", plot_tradeoff, "Over-refusal against refusal, one point per model (one panel per harmful ratio, "
                                    "base and aligned in each): top left is safe and helpful."),
    ("refusal_vs_fa.png", plot_refusal_vs_fa, "Fine-tune accuracy on the benign task against refusal, one panel per "
                                              "harmful ratio p, 95% intervals; dashed: the attacked model's refusal "
                                              "before the attack. Top right: the user's task learned, refusal kept."),
    ("step_diagnostics.png", plot_step_diagnostics, "Projection diagnostics at each optimizer step."),
]


def plot_blocks(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Plots")]
    for filename, fn, caption in PLOTS:
        try:
            fig, why = fn(exp)
        except Exception as exc:  # a malformed field must not sink the whole report
            fig, why = None, f"{filename}: not drawn ({exc.__class__.__name__}: {exc})"
        if fig is None:
            blocks.append(note(why))
            continue
        blocks.append(Block("image", caption, image=_png(fig), file=filename))
    return blocks
