"""Command line: thin subcommands over the Python API, mirroring the seed's steps.

Every expected failure (bad config, missing file, a direction file for another model, an output folder that
is a file or read-only, a full disk) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from orthoguard.errors import OrthoguardError, disk_error_line

log = logging.getLogger("orthoguard")


def _experiment(path: str | None, overrides: list[str] | None = None):
    from orthoguard.config import ExperimentConfig, load_config

    import yaml

    pairs = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise OrthoguardError(f"--set expects KEY=VALUE, got '{item}'")
        pairs[key] = yaml.safe_load(value)
    if path is None:
        from orthoguard.config import _validate

        return _validate(ExperimentConfig, {}, "defaults")
    return load_config(path, pairs)


def _refuse_set_for_seed(args, path: str) -> None:
    """``--set`` edits experiment-config keys; a seed step JSON has none of them, so refuse rather than ignore it."""
    if getattr(args, "set", None):
        raise OrthoguardError(
            f"--set applies to experiment configs, and {path} is a seed step JSON: edit its keys instead "
            f"(ignoring --set {args.set[0]} would train something else than asked)"
        )


def _check_run_dir(args, cfg) -> None:
    """Stop with one line, before any stage, when the run directory is a file or cannot be written."""
    from orthoguard.io import check_writable_dir

    check_writable_dir(args.run_dir or cfg.output_dir, "run directory")


def _seed_step(path: str):
    """A seed single-step JSON config -> (raw keys, ExperimentConfig whose model/data/training follow it)."""
    from orthoguard.config import (AttackConfig, AttackVariant, DataConfig, ExperimentConfig, ModelConfig,
                                   is_seed_config, read_mapping, seed_train_config)

    raw = read_mapping(path)
    if not is_seed_config(raw):
        return None, None
    train = seed_train_config(raw, path)
    mode = raw.get("mode", "vanilla")
    if mode not in {"vanilla", "orthogonal"}:
        raise OrthoguardError(f"{path}: mode must be 'vanilla' or 'orthogonal', got '{mode}'")
    split = raw.get("split")
    # The seed sliced the hub order and trained on HarmfulQA alone (no benign mix-in).
    data = DataConfig(source=raw.get("dataset_name", "declare-lab/HarmfulQA"), shuffle=False,
                      benign_train_prompts=0, benign_eval_prompts=0)
    cfg = ExperimentConfig(
        name=Path(path).stem,
        output_dir="artifacts",
        model=ModelConfig(name=raw.get("base_model_name", "Qwen/Qwen3-0.6B")),
        data=data,
        refusal=train,
        # The seed attacks the base model itself (Qwen3-0.6B is already aligned).
        attack=AttackConfig(target="base", training=train, variants=[
            AttackVariant(name=mode, mode=mode, directions="lora_factors", at="gradient")]),
    )
    if split:
        key = "refusal_split" if "mode" not in raw else "attack_split"
        cfg.data = cfg.data.model_copy(update={key: split})
        if key == "refusal_split" and split == "train":
            raise OrthoguardError(
                f"{path}: split 'train' would train the refusal LoRA on the attack and test questions too; "
                "use a disjoint slice such as 'train[:40%]'"
            )
    return raw, cfg


# ---------------------------------------------------------------------------------------------------------
# Subcommands


def cmd_run(args) -> None:
    from orthoguard.pipeline import run_pipeline

    cfg = _experiment(args.config, args.set)
    _check_run_dir(args, cfg)
    if args.executor == "slurm" or (args.jobs or 1) > 1:
        _run_parallel(args, cfg)
        return
    if args.seeds:
        from orthoguard.pipeline import run_seeds

        root = run_seeds(cfg, args.seeds, args.run_dir, force=args.force)
        for seed in args.seeds:
            print(f"seed {seed}:\n" + (root / f"seed-{seed}" / "results" / "summary.md").read_text())
        print(f"run directory: {root} (one folder per seed)")
        return
    run = run_pipeline(cfg, args.run_dir, force=args.force)
    print((run.path("results", "summary.md")).read_text())
    print(f"run directory: {run.root}")


def _run_parallel(args, cfg) -> None:
    """``run --jobs N`` / ``--executor slurm``: independent stages at once, one process or SLURM job each."""
    from orthoguard import distributed
    from orthoguard.parallel import run_parallel

    if distributed.world_size() > 1:
        raise OrthoguardError("--jobs/--executor start their own processes: run them without accelerate launch/torchrun")
    root = run_parallel(cfg, args.run_dir, jobs=args.jobs, executor=args.executor, force=args.force, seeds=args.seeds)
    for seed in args.seeds or [None]:
        folder = root if seed is None else root / f"seed-{seed}"
        print(("" if seed is None else f"seed {seed}:\n") + (folder / "results" / "summary.md").read_text())
    print(f"run directory: {root}" + (" (one folder per seed)" if args.seeds else ""))


def cmd_train_refusal(args) -> None:
    from orthoguard.pipeline import run_pipeline

    raw, cfg = _seed_step(args.config)
    if raw is not None:
        _refuse_set_for_seed(args, args.config)
        _check_run_dir(args, cfg)
        out = raw.get("output_dir", "artifacts/refusal_lora")
        run_pipeline(cfg, args.run_dir, force=args.force, only={"data", "benign", "refusal"}, paths={"adapter:refusal": out})
        print(f"refusal adapter: {out}")
        return
    cfg = _experiment(args.config, args.set)
    _check_run_dir(args, cfg)
    run = run_pipeline(cfg, args.run_dir, force=args.force, only={"data", "benign", "refusal"})
    print(f"refusal adapter: {run.adapter('refusal')}")


def cmd_directions(args) -> None:
    from orthoguard.directions import compute_directions, save_directions

    if args.config:
        from orthoguard.pipeline import run_pipeline

        run = run_pipeline(_experiment(args.config, args.set), args.run_dir, force=args.force, only={"directions"})
        for key in run.direction_keys():
            print(f"directions: {run.directions_path(key)}")
        return
    if not args.refusal_adapter_path:
        raise OrthoguardError("directions: give CONFIG or --refusal_adapter_path")
    out = Path(args.output_path)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
        print(f"note: directions are saved as safetensors, not pickle: {out}")
    from orthoguard.config import DirectionsConfig

    directions = compute_directions(args.kind, args.refusal_adapter_path, DirectionsConfig())
    save_directions(out, directions, {"family": args.kind, "base_model": args.base_model_name or "", "adapter": args.refusal_adapter_path})
    print(f"{len(directions)} directions ({args.kind}) -> {out}")


def cmd_train_attack(args) -> None:
    from orthoguard.pipeline import run_pipeline

    raw, cfg = _seed_step(args.config)
    if raw is not None:
        _refuse_set_for_seed(args, args.config)
        _check_run_dir(args, cfg)
        mode = raw.get("mode", "vanilla")
        paths = {f"adapter:attack-{mode}": raw.get("output_dir", f"artifacts/attack_{mode}")}
        if mode == "orthogonal":
            directions = raw.get("refusal_directions_path")
            if not directions:
                raise OrthoguardError(f"{args.config}: orthogonal mode needs 'refusal_directions_path'")
            paths["directions"] = directions
        run_pipeline(cfg, args.run_dir, force=args.force, only={"data", "synth", f"attack:{mode}"}, paths=paths)
        print(f"attack adapter: {paths[f'adapter:attack-{mode}']}")
        return
    cfg = _experiment(args.config, args.set)
    names = [v.name for v in cfg.attack.variants]
    chosen = args.variant or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise OrthoguardError(f"unknown variant '{unknown[0]}' (config has: {', '.join(names)})")
    stages = {"data", "synth", "benign", "refusal", "directions"} | {f"attack:{n}" for n in chosen}
    _check_run_dir(args, cfg)
    run = run_pipeline(cfg, args.run_dir, force=args.force, only=stages)
    for name in chosen:
        print(f"attack adapter: {run.adapter(f'attack-{name}')}")


def cmd_evaluate(args) -> None:
    from orthoguard.evaluation import PromptSet, evaluate_models, summary_table
    from orthoguard.pipeline import HARMFUL_SET, run_pipeline

    if args.config:
        cfg = _experiment(args.config, args.set)
        _check_run_dir(args, cfg)
        run = run_pipeline(cfg, args.run_dir, force=args.force, only={"eval", "evaluate"})  # every model, then the summary
        print(run.path("results", "summary.md").read_text())
        return
    # The seed's form: one base model and adapters applied to it one at a time.
    from orthoguard import data as D
    from orthoguard.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig

    if not args.base_model_name:
        raise OrthoguardError("evaluate: give CONFIG or --base_model_name")
    from orthoguard.io import check_writable_dir

    out_dir = Path(args.run_dir or SEED_RESULTS_DIR)
    if not args.force:
        earlier = [out_dir / name for name in SEED_RESULT_FILES if (out_dir / name).exists()]
        if earlier:
            raise OrthoguardError(f"{earlier[0]} holds the results of an earlier evaluation; pass --force to "
                                  "overwrite them, or --output-dir to write elsewhere")
    check_writable_dir(out_dir, "output directory")
    data = DataConfig(source=args.dataset, test_split=args.test_split)
    cfg = ExperimentConfig(model=ModelConfig(name=args.base_model_name), data=data,
                           evaluation=EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size))
    rows = D.load_harmfulqa(data.source, data.hub_split)
    test = D.split_questions([r.question for r in rows], {"test": data.test_split}, seed=cfg.seed, shuffle=False)["test"]
    models = {"base": []}
    for name in ("vanilla", "orthogonal", "regularized"):
        adapter = getattr(args, f"{name}_adapter")
        if adapter:
            models[name] = [Path(adapter)]
    for spec in args.adapter or []:
        name, _, path = spec.partition("=")
        models[name] = [Path(path)]
    summary = evaluate_models(cfg, models, [PromptSet(HARMFUL_SET, test[: args.max_prompts], harmful=True)], out_dir)
    print(summary_table(summary))


def cmd_synth(args) -> None:
    from orthoguard import data as D
    from orthoguard.pipeline import run_pipeline, synthesize

    cfg = _experiment(args.config, args.set)
    if args.model_name:
        cfg.synth = cfg.synth.model_copy(update={"model": args.model_name})
    from orthoguard.pipeline import load_splits

    run = run_pipeline(cfg, args.run_dir, only={"data"})
    questions = load_splits(run).attack
    limit = args.max_prompts or cfg.synth.max_prompts
    items = synthesize(cfg, questions[:limit] if limit else questions)
    out = Path(args.output_path or run.path("data", "synthetic.json"))
    D.save_synthetic(out, items)
    print(f"{len(items)} synthetic answers -> {out}")


def cmd_judge(args) -> None:
    from orthoguard.judges import REFUSAL, get_judge, judge_jsonl, measures

    kwargs = {"endpoint": args.judge_endpoint, "model": args.judge_model} if args.judge_endpoint else {}
    judge = get_judge(args.judge, **kwargs)
    stats = judge_jsonl(args.input, args.output, judge)
    calls = [f"{stats['refused']}/{stats['total']} refused"] if REFUSAL in measures(type(judge)) else []
    calls += [f"{stats['harmful']}/{stats['total']} harmful"] if getattr(judge, "harm_field", None) == "harmful_reply" else []
    print(f"{', '.join(calls) or str(stats['total']) + ' judged'}, {stats['errors']} judge errors -> {args.output}")


# ---------------------------------------------------------------------------------------------------------


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects integers separated by commas, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds expects distinct integers, got '{text}'")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"--seeds expects seeds >= 0, got {negative[0]} in '{text}'")
    return seeds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got '{text}'")
    return value


def weight_space_families() -> list[str]:
    """The families `directions --refusal_adapter_path` can compute from an adapter alone (not activation)."""
    from orthoguard.families import family_names

    return family_names(needs_model=False)


SEED_RESULTS_DIR = "artifacts/results"
# What the seed form of `evaluate` writes into its output folder (besides per-set JSONL files).
SEED_RESULT_FILES = ("local_refusal_test.json", "summary.json", "summary.md")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, ``orthoguard: error: ...`` like every other error, exit code 2."""

    def error(self, message: str):
        command = self.prog.removeprefix("orthoguard").strip()
        self.exit(2, f"orthoguard: error: {command + ': ' if command else ''}{message} (see '{self.prog} -h')\n")


def _add_global_flags(p: argparse.ArgumentParser, top: bool = False) -> None:
    """-v/--verbose before or after the subcommand (``orthoguard -v run C`` and ``orthoguard run C -v``). On a
    subcommand the default is SUPPRESS, so that its absence there does not undo a -v given before it."""
    p.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="log at DEBUG level (the default is INFO)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orthoguard", description="Refusal LoRA, refusal directions, vanilla and orthogonal attacks, evaluation.")
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p, required=False, flag=False, output_help=None,
                    force_help="redo the stages even if their outputs are up to date"):
        if flag:
            p.add_argument("--config", required=required, help="experiment YAML, or the seed's step JSON")
        else:
            p.add_argument("config", nargs=None if required else "?", help="experiment config (YAML or JSON)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. attack.training.epochs=1 (repeatable; experiment configs "
                            "only: refused with a seed step JSON, whose keys you edit instead)")
        if output_help:
            p.add_argument("--output-dir", "--output_dir", "--run-dir", "--run_dir", dest="run_dir", help=output_help)
        else:
            p.add_argument("--run-dir", "--output-dir", "--run_dir", "--output_dir", dest="run_dir",
                           help="run directory (default: the config's output_dir)")
        p.add_argument("--force", action="store_true", help=force_help)

    p = sub.add_parser("run", help="run every stage of an experiment config")
    with_config(p, required=True)
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds >= 0: one full run each, e.g. 0,1,2")
    p.add_argument("--jobs", type=_positive_int, metavar="N",
                   help="run up to N independent stages at once, one process each (one GPU each on a GPU machine, "
                        "the CPU threads split between them on a CPU); with --executor slurm: at most N jobs queued "
                        "or running (default: every ready stage)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: processes on this machine (default); slurm: one SLURM job per stage through "
                        "submitit, with the config's cluster resources (pip install orthoguard[cluster])")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("synth", help="generate compliant answers to harmful questions (the seed's synthetic data)")
    with_config(p)
    p.add_argument("--model_name", "--model-name", help="generator model (default: the config's model)")
    p.add_argument("--max_prompts", "--max-prompts", type=int,
                   help="answer at most N attack questions (default: the config's synth.max_prompts)")
    p.add_argument("--output_path", "--output-path",
                   help="where to write the JSON list of answers (default: RUN_DIR/data/synthetic.json)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train-refusal", help="train the refusal LoRA")
    with_config(p, required=True, flag=True)
    p.set_defaults(func=cmd_train_refusal)

    p = sub.add_parser("directions", help="turn the refusal adapter into normalized parameter directions")
    with_config(p)
    p.add_argument("--refusal_adapter_path", "--refusal-adapter-path",
                   help="refusal LoRA adapter folder to take the directions from (the seed's form, without CONFIG)")
    p.add_argument("--output_path", "--output-path", default="artifacts/refusal_param_directions.safetensors",
                   help="safetensors file to write (default: %(default)s; a .pt name is changed to .safetensors)")
    p.add_argument("--base_model_name", "--base-model-name",
                   help="base model the adapter was trained on, recorded in the file's metadata")
    p.add_argument("--kind", default="lora_factors", choices=weight_space_families(),
                   help="direction family (activation needs a model: use `directions CONFIG`)")
    p.set_defaults(func=cmd_directions)

    p = sub.add_parser("train-attack", help="train attack LoRAs (vanilla / orthogonal)")
    with_config(p, required=True, flag=True)
    p.add_argument("--variant", action="append", help="only this variant of the experiment config (repeatable)")
    p.set_defaults(func=cmd_train_attack)

    p = sub.add_parser("evaluate", help="refusal rates of base / aligned / attacked models on held-out prompts")
    with_config(p, output_help=(
        "with CONFIG: the run directory (default: the config's output_dir); in the seed's form: the results "
        f"folder (default: {SEED_RESULTS_DIR}). Results an earlier evaluation left there are never overwritten "
        "silently: the command stops with an error naming the file, unless --force is given"),
        force_help="with CONFIG: redo the evaluation even if it is up to date; in the seed's form: overwrite the "
                   "results an earlier evaluation left in the output folder")
    p.add_argument("--base_model_name", "--base-model-name", help="base model (hub id, folder or embedded alias): the seed's form, without CONFIG")
    p.add_argument("--vanilla_adapter", "--vanilla-adapter", help="vanilla attack adapter folder, evaluated as 'vanilla'")
    p.add_argument("--orthogonal_adapter", "--orthogonal-adapter", help="orthogonal attack adapter folder, evaluated as 'orthogonal'")
    p.add_argument("--regularized_adapter", "--regularized-adapter", help="regularized attack adapter folder, evaluated as 'regularized'")
    p.add_argument("--adapter", action="append", metavar="NAME=PATH", help="any other adapter folder, evaluated as NAME (repeatable)")
    p.add_argument("--dataset", default="declare-lab/HarmfulQA", help="HarmfulQA source for the seed form")
    p.add_argument("--test_split", "--test-split", default="train[90%:]", help="held-out slice of the dataset (default: %(default)s)")
    p.add_argument("--max_prompts", "--max-prompts", type=int, default=100, help="at most N test prompts (default: %(default)s)")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=96, help="reply length in tokens (default: %(default)s)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=16, help="prompts generated at once (default: %(default)s)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("judge", help="add a refusal verdict to each record of a JSONL file")
    p.add_argument("input", help="JSONL with 'prompt' and 'response' fields")
    p.add_argument("-o", "--output", required=True, help="JSONL file to write: every input record plus 'refused' and 'outcome'")
    p.add_argument("--judge", default="keyword", help="keyword (default), or an LLM judge with --judge-endpoint")
    p.add_argument("--judge-endpoint", help="OpenAI-compatible base URL for an LLM judge")
    p.add_argument("--judge-model", default="judge", help="the LLM judge's model name on that server (default: %(default)s)")
    p.set_defaults(func=cmd_judge)

    from orthoguard import http_eval, hub, report
    from orthoguard.judges import agreement

    http_eval.register_cli(sub)
    agreement.register_cli(sub)
    report.register_cli(sub)
    hub.register_cli(sub)
    for subparser in sub.choices.values():
        _add_global_flags(subparser)
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--seeds -1,2`` -> ``--seeds=-1,2``: argparse would take ``-1,2`` for an option and report a missing value
    instead of the negative seed."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--seeds" and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"--seeds={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from orthoguard.hardware import prepare_environment

    prepare_environment()  # before torch is imported: how idle OpenMP threads wait, kept freed memory
    argv = _join_negative_values(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except OrthoguardError as exc:
        print(f"orthoguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("orthoguard: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line = disk_error_line(exc)
        if line is None:
            raise
        print(f"orthoguard: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
