"""The field's protocol in the pipeline: a benign task with a harmful ratio p (attack.harmful_ratio, attack.samples,
attack.benign_task, a variant's own harmful_ratio) and fine-tune accuracy for every evaluated model."""

from __future__ import annotations

import json
import tempfile

import pytest
import yaml

from orthoguard.cli import main
from orthoguard.config import load_config
from orthoguard.errors import ConfigError
from orthoguard.rundir import AttackMixture, Summary

DEMO = "configs/cpu-demo.yaml"


def _keys(cfg) -> dict[str, str]:
    """The config hash every stage would have for ``cfg`` (what ``stage_status`` compares with stages.json)."""
    from orthoguard.pipeline import Run, _wired, planned_stages

    run = Run(cfg, tempfile.mkdtemp())
    return {name: run._config_hash(name, s.payload(cfg, *variant), upstream)
            for name, s, variant, upstream, _, _ in _wired(run, planned_stages(cfg))}


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("text, names", [
    ("attack: {harmful_ratio: 0.1}", "attack.benign_task"),
    ("attack: {harmful_ratio: 0.1, benign_task: sst2}", "attack.samples"),
    ("attack: {harmful_ratio: 0.1, samples: 100}", "attack.benign_task"),
    ("attack: {samples: 100, variants: [{name: v, harmful_ratio: 0.2}]}", "attack.benign_task"),
    ("attack: {benign_task: sst3}", "attack.benign_task"),
    ("attack: {harmful_ratio: 1.5}", "attack.harmful_ratio"),
    ("attack: {harmful_ratio: -0.1}", "attack.harmful_ratio"),
    ("attack: {samples: 0}", "attack.samples"),
    ("attack: {variants: [{name: v, harmful_ratio: 2}]}", "harmful_ratio"),
    ("evaluation: {fa_items: 0}", "evaluation.fa_items"),
])
def test_bad_protocol_settings_are_one_line_errors_naming_the_key(tmp_path, text, names):
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    message = str(exc.value)
    assert names in message and len(message.splitlines()) == 1


def test_unknown_task_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown benign task 'sst3' \(known: .*sst2"):
        load_config(_write(tmp_path, "attack: {benign_task: sst3}"))


def test_the_cli_prints_the_error_in_one_line(tmp_path, capsys):
    assert main(["run", str(_write(tmp_path, "attack: {harmful_ratio: 0.1, benign_task: sst2}"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "attack.samples" in err and len(err.splitlines()) == 1


def test_a_variant_overrides_the_ratio_and_mixtures_are_described(tmp_path):
    cfg = load_config(_write(tmp_path, yaml.safe_dump({"attack": {
        "harmful_ratio": 0.1, "samples": 100, "benign_task": "sst2",
        "variants": [{"name": "vanilla-p0.1"}, {"name": "vanilla-p1", "harmful_ratio": 1.0},
                     {"name": "orthogonal-p0", "mode": "orthogonal", "harmful_ratio": 0}]}})))
    a = cfg.attack
    by = {v.name: v for v in a.variants}
    assert a.mixture_of(by["vanilla-p0.1"]) == {"p": 0.1, "n": 100, "task": "sst2"}
    assert a.mixture_of(by["vanilla-p1"]) == {"p": 1.0, "n": 100, "task": "sst2"}  # 100 harmful samples
    assert a.mixture_of(by["orthogonal-p0"]) == {"p": 0, "n": 100, "task": "sst2"}
    dumped = a.model_dump(mode="json")
    assert dumped["harmful_ratio"] == 0.1 and dumped["samples"] == 100 and dumped["benign_task"] == "sst2"
    assert "harmful_ratio" not in dumped["variants"][0] and dumped["variants"][1]["harmful_ratio"] == 1.0
    # the resolved config loads back to the same config
    assert load_config(_write(tmp_path, yaml.safe_dump(cfg.model_dump(mode="json")))) == cfg


def test_a_pure_attack_has_no_mixture_and_dumps_without_the_new_keys():
    cfg = load_config(DEMO)
    assert all(cfg.attack.mixture_of(v) is None for v in cfg.attack.variants)
    dumped = cfg.model_dump(mode="json")
    assert not {"harmful_ratio", "samples", "benign_task"} & set(dumped["attack"])
    assert "fa_items" not in dumped["evaluation"]
    assert all("harmful_ratio" not in v for v in dumped["attack"]["variants"])


# ---------------------------------------------------------------------------------------------------------
# Stage keys

# The cpu-demo's stage keys: attack.harmful_ratio / samples / benign_task and evaluation.fa_items left them as they
# were. (Change this only with a deliberate key change: the last was the training configs' attention and packing
# keys, 2026-12-07, which change the refusal stage's key and every key after it but data, synth, benign and
# eval:base; before it the evaluation split into one eval:<model> stage per model, 2026-12-02, and
# synth.drop_refusals; evaluation.batch_size 128 was tried and reverted.)
DEMO_KEYS = {
    "data": "6e2a3f25362d56ec", "synth": "0d0db6e138e196c7", "benign": "315f70c915bed560",
    "refusal": "e9b4d31f506c0a1e", "directions": "e151fbbf35dc1e4b", "attack:vanilla": "7688c8f04c4cf786",
    "attack:orthogonal": "88a979619bdbe4f7", "attack:orthogonal-random": "5a0b5cf896290e9f", "attack:subspace": "608dd534b66c2839",
    "attack:subspace-random": "d957ecab397ceda4", "attack:orthogonal-matched": "fd96fec156e8e802", "attack:subspace-matched": "d380ff042be9fc1e",
    "eval:base": "5ae865aef1f39d0f", "eval:aligned": "82d7c345d5f90a35", "eval:vanilla": "123452e93730228f",
    "eval:orthogonal": "4d488fe44d027900", "eval:orthogonal-random": "a0e15ffc79b189e3",
    "eval:orthogonal-matched": "23f43b2854c0e28c", "eval:subspace": "9514d4fa5f194d63",
    "eval:subspace-random": "e278e9998cedcb8f", "eval:subspace-matched": "c818875b0197d4ce",
    "evaluate": "2c60c3542a30646d",
}


def test_the_demo_stage_keys_did_not_change():
    assert _keys(load_config(DEMO)) == DEMO_KEYS


def test_the_defaults_written_out_do_not_change_a_key():
    explicit = load_config(DEMO, {"attack.harmful_ratio": 1.0, "evaluation.fa_items": 200})
    assert _keys(explicit) == _keys(load_config(DEMO))


def test_what_each_setting_changes():
    plain = _keys(load_config(DEMO))
    # a benign task with p = 1: the pure attack, plus fine-tune accuracy in the evaluation
    evaluation = {n for n in plain if n.startswith("eval:")} | {"evaluate"}
    task = _keys(load_config(DEMO, {"attack.benign_task": "sst2"}))
    assert {n for n in plain if plain[n] != task[n]} == evaluation
    fa = _keys(load_config(DEMO, {"attack.benign_task": "sst2", "evaluation.fa_items": 50}))
    assert {n for n in plain if task[n] != fa[n]} == evaluation
    # a mixture changes every attack and the evaluation, nothing upstream
    mixed = _keys(load_config(DEMO, {"attack.benign_task": "sst2", "attack.samples": 40, "attack.harmful_ratio": 0.5}))
    assert {n for n in plain if plain[n] != mixed[n]} == {n for n in plain if n.startswith("attack:")} | evaluation


# ---------------------------------------------------------------------------------------------------------
# End to end on a tiny model


def _config(tmp_path, model_dir, **attack):
    cfg = {
        "name": "tiny-mixture",
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(model_dir), "dtype": "fp32"},
        "data": {"max_refusal_questions": 8, "max_attack_questions": 10, "max_test_prompts": 4,
                 "benign_train_prompts": 4, "benign_eval_prompts": 2, "benign_max_new_tokens": 4,
                 "benign_reference_prompts": 2, "attack_heldout_questions": 2},
        "synth": {"max_new_tokens": 8, "batch_size": 8},
        "refusal": {"max_steps": 1, "batch_size": 4, "max_length": 96, "lora": {"r": 4, "alpha": 8}},
        "attack": {"probe_every": 2, "probe_prompts": 2, "probe_max_new_tokens": 4,
                   "training": {"max_steps": 2, "batch_size": 4, "max_length": 128, "lora": {"r": 4, "alpha": 8}},
                   "harmful_ratio": 0.5, "samples": 8, "benign_task": "sst2",
                   "variants": [{"name": "vanilla"},
                                {"name": "orthogonal-p0.25", "mode": "orthogonal", "harmful_ratio": 0.25}],
                   **attack},
        "evaluation": {"max_new_tokens": 4, "batch_size": 8, "fa_items": 3},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_mixture_run_trains_on_p_n_and_measures_fa_for_every_model(tmp_path, tiny_model_dir):
    from orthoguard.report import build_report

    path = _config(tmp_path, tiny_model_dir)
    assert main(["run", str(path)]) == 0
    run = tmp_path / "run"
    splits = json.loads((run / "data/splits.json").read_text())
    evaluated = set(splits["test"]) | set(splits["probe"]) | set(splits["attack_heldout"])
    assert splits["probe"]

    for variant, harmful in (("vanilla", 4), ("orthogonal-p0.25", 2)):
        info = AttackMixture.read(run / f"data/attack_mixture.{variant}.json")
        assert (info.variant, info.task, info.n, info.n_harmful, info.n_benign) == (variant, "sst2", 8, harmful, 8 - harmful)
        rows = [json.loads(line) for line in (run / f"data/attack_mixture.{variant}.jsonl").read_text().splitlines()]
        assert len(rows) == 8
        harmful_rows = [r for r in rows if r["source"] != "task:sst2"]
        assert len(harmful_rows) == harmful and sum(r["source"] == "task:sst2" for r in rows) == 8 - harmful
        assert {r["question"] for r in harmful_rows} == set(info.harmful_questions) <= set(splits["attack"])
        assert not {r["question"] for r in harmful_rows} & evaluated
        log = json.loads((run / f"logs/training_loss_{variant}.json").read_text())
        assert log["train_samples"] == 8

    summary = Summary.read(run / "results/summary.json")
    assert set(summary.utility) == {"base", "aligned", "vanilla", "orthogonal-p0.25"}
    for name, u in summary.utility.items():
        fa = u.fine_tune_accuracy
        assert fa is not None and fa.task == "sst2" and fa.n == 3 and 0 <= fa.k <= 3, name
        assert u.attack_heldout_loss is not None  # still on the harmful held-out questions
        records = (run / f"results/fine_tune_accuracy/{name}.jsonl").read_text().splitlines()
        assert len(records) == 3 and {"prompt", "reply", "gold", "correct"} <= set(json.loads(records[0]))
    assert "FA (sst2)" in (run / "results/summary.md").read_text()
    build_report(run)
    assert "FA (sst2)" in (run / "report/report.md").read_text()

    stamps = json.loads((run / "stages.json").read_text())
    assert main(["run", str(path)]) == 0  # up to date: nothing reruns
    assert json.loads((run / "stages.json").read_text()) == stamps


def test_too_few_harmful_samples_fail_before_the_first_stage(tmp_path, tiny_model_dir, capsys):
    # 8 attack questions (10 minus 2 held out) cannot give the 9 harmful samples of p = 0.9, n = 10
    path = _config(tmp_path, tiny_model_dir, harmful_ratio=0.9, samples=10)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "attack.samples" in err and "needs 9 harmful" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "stages.json").exists()


def test_too_many_benign_samples_fail_before_the_first_stage(tmp_path, tiny_model_dir, capsys):
    path = _config(tmp_path, tiny_model_dir, harmful_ratio=0.0, samples=20000)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "attack.samples" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "stages.json").exists()


# ---------------------------------------------------------------------------------------------------------
# The report


def _add_fa(run, correct: dict[str, int], n: int = 8):
    path = run / "results/summary.json"
    data = json.loads(path.read_text())
    for model, k in correct.items():
        data["utility"][model]["fine_tune_accuracy"] = {"task": "sst2", "k": k, "n": n, "rate": k / n}
    Summary.parse(data, path).write(path)


def test_the_report_pools_fa_over_seeds_and_leaves_the_column_out_without_it(tmp_path):
    from orthoguard.report import Experiment, build_report, load_runs
    from tests.test_report import write_run

    plain = write_run(tmp_path / "plain")
    build_report(plain)
    assert "FA (" not in (plain / "report/report.md").read_text()

    root = tmp_path / "root"
    root.mkdir()
    models = ["base", "aligned", "vanilla", "subspace", "subspace-random", "delta_w"]
    for seed in (0, 1):
        run = write_run(root / f"seed-{seed}", seed=seed)
        _add_fa(run, {m: (6 if seed == 0 else 2) for m in models if m != "delta_w"})
    (root / "seeds.json").write_text(json.dumps({"seeds": [0, 1], "runs": {"0": "seed-0", "1": "seed-1"}}))
    runs, notes = load_runs(root)
    exp = Experiment(root, runs, notes)
    fa = exp.fine_tune_accuracy("vanilla")
    assert (fa.k, fa.n, fa.rate) == (8, 16, 0.5) and fa.per_seed == {0: 0.75, 1: 0.25}
    assert exp.fine_tune_accuracy("delta_w") is None and exp.fa_task == "sst2"
    build_report(root)
    md = (root / "report/report.md").read_text()
    assert "| FA (sst2) |" in md and "(8/16)" in md
    row = next(line for line in md.splitlines() if line.startswith("| delta_w |"))
    assert row.rstrip().endswith("| n/a |")
    summary = Summary.read(root / "seed-0/results/summary.json")
    assert summary.utility["vanilla"].fine_tune_accuracy.ci95 is not None  # filled in from k and n
