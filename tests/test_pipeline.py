"""End to end: `orthoguard run` on a tiny random model, offline, with the embedded questions-only data."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from orthoguard.cli import main
from orthoguard.config import load_config


def _config(tmp_path, model_dir, **extra):
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(model_dir), "dtype": "fp32"},
        "data": {"max_refusal_questions": 12, "max_attack_questions": 8, "max_test_prompts": 6,
                 "benign_train_prompts": 4, "benign_eval_prompts": 3, "benign_max_new_tokens": 8,
                 "benign_reference_prompts": 4, "attack_heldout_questions": 2},
        "synth": {"max_new_tokens": 12, "batch_size": 8},
        "refusal": {"max_steps": 3, "batch_size": 4, "max_length": 96, "lora": {"r": 4, "alpha": 8}},
        "directions": {"activation_prompts": 4},
        "attack": {"probe_every": 1, "probe_prompts": 3, "probe_max_new_tokens": 4,
                   "training": {"max_steps": 2, "batch_size": 4, "max_length": 96, "lora": {"r": 4, "alpha": 8}},
                   "variants": [{"name": "vanilla"},
                                {"name": "orthogonal", "mode": "orthogonal", "directions": "lora_factors", "at": "gradient"},
                                {"name": "subspace", "mode": "orthogonal", "directions": "subspace"},
                                {"name": "subspace-random", "mode": "orthogonal", "directions": "subspace", "random": True},
                                {"name": "subspace-matched", "mode": "orthogonal", "directions": "subspace", "random": "matched"},
                                {"name": "delta_w", "mode": "orthogonal", "directions": "delta_w"},
                                {"name": "activation", "mode": "orthogonal", "directions": "activation"},
                                {"name": "regularized", "mode": "regularized", "directions": "delta_w", "reg_lambda": 10.0}]},
        "evaluation": {"max_new_tokens": 8, "batch_size": 4, "prompt_sets": [{"name": "xstest-safe", "limit": 3}]},
    }
    for dotted, value in extra.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_end_to_end_then_skips_up_to_date_stages(tmp_path, tiny_model_dir, capsys):
    path = _config(tmp_path, tiny_model_dir)
    assert main(["run", str(path)]) == 0
    run = tmp_path / "run"
    for rel in ["config.resolved.yaml", "stages.json", "data/splits.json", "data/synthetic.json", "data/benign.jsonl",
                "data/refusal.jsonl", "data/attack.jsonl", "adapters/refusal/adapter_model.safetensors",
                "adapters/attack-vanilla/adapter_model.safetensors", "adapters/attack-orthogonal/adapter_model.safetensors",
                "directions/refusal.lora_factors.safetensors", "directions/refusal.subspace.safetensors",
                "directions/refusal.random-subspace.safetensors", "directions/refusal.delta_w.safetensors",
                "directions/refusal.activation.safetensors", "logs/training_loss_refusal.json",
                "logs/training_loss_vanilla.json", "logs/training_loss_orthogonal.json",
                "results/local_refusal_test.json", "results/summary.json"]:
        assert (run / rel).exists(), rel

    splits = json.loads((run / "data/splits.json").read_text())
    assert not set(splits["refusal"]) & set(splits["attack"]) and not set(splits["attack"]) & set(splits["test"])
    attack_questions = {json.loads(line)["question"] for line in (run / "data/attack.jsonl").read_text().splitlines()}
    assert attack_questions <= set(splits["attack"])

    results = json.loads((run / "results/local_refusal_test.json").read_text())
    assert set(results) == {"base", "aligned", "vanilla", "orthogonal", "subspace", "subspace-random", "subspace-matched",
                            "delta_w", "activation", "regularized"}
    assert (run / "adapters/blue").is_dir() and (run / "adapters/red").is_dir()
    assert (run / "directions/refusal.blue-red.delta_w.safetensors").is_file()
    for name, r in results.items():
        assert r["model_name"] == name and r["total_prompts"] == 6 == len(r["results"])
        assert r["refusals"] == sum(x["refused"] is True for x in r["results"])
        assert {"prompt", "response", "refused"} <= set(r["results"][0])
    log = json.loads((run / "logs/training_loss_orthogonal.json").read_text())
    assert [x["step"] for x in log["losses"]] == [1, 2] and "grad_removed_frac" in log["losses"][0]
    assert [p["step"] for p in log["probes"]] == [0, 1, 2] and all(p["n"] + p["errors"] == 3 for p in log["probes"])
    log = json.loads((run / "logs/training_loss_subspace.json").read_text())
    assert "update_removed_frac" in log["losses"][0]
    # the subspace variant keeps its change out of the protected subspace; vanilla does not (the diagnostics have
    # their own file; the training log is written once, by training)
    assert "diagnostics" not in log
    assert json.loads((run / "logs/diagnostics_subspace.json").read_text())["overall"]["energy_in_ref_subspace"] < 1e-8
    vanilla = json.loads((run / "logs/diagnostics_vanilla.json").read_text())["overall"]
    assert vanilla["energy_in_ref_subspace"] > 1e-4
    assert "refusal on harmfulqa-test" in capsys.readouterr().out
    summary = json.loads((run / "results/summary.json").read_text())
    assert summary["harmful_sets"] == ["harmfulqa-test"] and summary["benign_sets"] == ["harmless-val", "xstest-safe"]
    assert summary["controls"] == {"subspace": {"same_rank": "subspace-random", "matched": "subspace-matched"}}
    assert summary["attacked"] == "aligned"
    assert summary["utility"]["vanilla"]["attack_heldout_loss"] > 0 and summary["utility"]["base"]["benign_perplexity"] > 1
    pairs = summary["mcnemar"]["harmfulqa-test"]
    assert len(pairs) == 10 * 9 // 2 and all(0 <= p["p_value"] <= 1 for p in pairs)
    assert "xstest-safe" in summary["categories"]["base"]
    splits = json.loads((run / "data/splits.json").read_text())
    assert splits["attack_heldout"] and not set(splits["attack_heldout"]) & attack_questions
    # the probes have their own questions, apart from every other split
    assert len(splits["probe"]) == 3 and log["probes"]
    for other in ("refusal", "attack", "attack_heldout", "test"):
        assert not set(splits["probe"]) & set(splits[other]), other
    # every attack variant starts from the same LoRA initialisation, which is not the refusal LoRA's
    logs = {v: json.loads((run / f"logs/training_loss_{v}.json").read_text()) for v in results if v not in ("base", "aligned")}
    init_seeds = {log["init_seed"] for log in logs.values()}
    refusal_seed = json.loads((run / "logs/training_loss_refusal.json").read_text())["init_seed"]
    assert len(init_seeds) == 1 and refusal_seed not in init_seeds
    # the matched control is sized from the subspace defence's own training, and says so
    matched = logs["subspace-matched"]["projection"]
    assert matched["family"] == "matched" and (run / "directions/refusal.matched-subspace-matched.safetensors").is_file()
    assert set(matched["tensors"]) <= set(logs["subspace"]["projection"]["tensors"])

    stamps = json.loads((run / "stages.json").read_text())
    assert main(["run", str(path)]) == 0  # everything is up to date
    assert json.loads((run / "stages.json").read_text()) == stamps

    # changing one variant's training redoes that variant, its evaluation and the summary, nothing upstream
    variants = load_config(path).attack.model_dump(mode="json")["variants"]
    variants[0]["training"] = {"learning_rate": 1e-3}
    changed = load_config(path, {"attack.variants": variants})
    path.write_text(yaml.safe_dump(changed.model_dump(mode="json")))
    assert main(["run", str(path)]) == 0
    after = json.loads((run / "stages.json").read_text())
    redone = {name for name in after if after[name]["finished"] != stamps[name]["finished"] or after[name]["key"] != stamps[name]["key"]}
    assert redone == {"attack:vanilla", "eval:vanilla", "evaluate"}


def test_overlapping_splits_stop_the_run(tmp_path, tiny_model_dir, capsys):
    path = _config(tmp_path, tiny_model_dir, data__attack_split="train[30%:90%]")
    assert main(["run", str(path)]) == 2
    assert "overlap" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("attack:\n  trainig: {}\n", "unknown config key 'attack.trainig'"),
    ("model: {dtype: fp8}\n", "model.dtype"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_seeds_make_one_run_each(tmp_path, tiny_model_dir):
    path = _config(tmp_path, tiny_model_dir, attack__variants=[{"name": "vanilla"}], data__benign_reference_prompts=2,
                   evaluation__prompt_sets=[])
    assert main(["run", str(path), "--seeds", "0,1"]) == 0
    root = tmp_path / "run"
    assert json.loads((root / "seeds.json").read_text()) == {"seeds": [0, 1], "runs": {"0": "seed-0", "1": "seed-1"}}
    splits = [json.loads((root / f"seed-{s}" / "data/splits.json").read_text()) for s in (0, 1)]
    assert splits[0]["test"] != splits[1]["test"]  # the seed changes the question split too
    for s in (0, 1):
        assert json.loads((root / f"seed-{s}" / "results/summary.json").read_text())["seed"] == s


def _finished(run):
    return {name: record["finished"] + record["key"] for name, record in json.loads((run / "stages.json").read_text()).items()}


def _rerun(path, run, caplog):
    before = _finished(run)
    time.sleep(1.1)  # "finished" has one-second resolution
    caplog.clear()
    assert main(["run", str(path)]) == 0
    after = _finished(run)
    return {name for name in after if after[name] != before.get(name)}


def test_changed_inputs_and_damaged_outputs_redo_their_stages(tmp_path, tiny_model_dir, caplog, capsys, monkeypatch):
    secret = "hf_pipelinerunsecret0000000000"
    monkeypatch.setenv("HF_TOKEN", secret)  # a run with a token set: it must not reach any log or artifact
    caplog.set_level("DEBUG")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    path = _config(tmp_path, model, attack__variants=[{"name": "vanilla"}], evaluation__prompt_sets=[])
    run = tmp_path / "run"
    assert main(["run", str(path)]) == 0
    record = json.loads((run / "stages.json").read_text())["attack:vanilla"]
    assert "adapters/refusal" in record["inputs"] and str(model.resolve()) in record["inputs"]
    assert set(record["outputs"]) == {"adapters/attack-vanilla", "logs/training_loss_vanilla.json",
                                      "logs/diagnostics_vanilla.json"}

    # a truncated adapter is reported by path and trained again, nothing upstream is
    weights = run / "adapters/attack-vanilla/adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    redone = _rerun(path, run, caplog)
    assert f"{run / 'adapters/attack-vanilla'} is not the file its stage wrote" in caplog.text
    assert "attack:vanilla" in redone and not redone & {"data", "synth", "benign", "refusal", "directions"}
    load_file(weights)  # whole again

    # a hand-edited data file redoes the stage that wrote it; identical regenerated bytes stop the cascade there
    benign = run / "data/benign.jsonl"
    benign.write_text(benign.read_text().replace('"response": "', '"response": "edited '))
    assert _rerun(path, run, caplog) == {"benign"}

    # a changed local model (same path) redoes every stage that reads it
    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = config["rms_norm_eps"] * 2
    (model / "config.json").write_text(json.dumps(config))
    redone = _rerun(path, run, caplog)
    assert redone == {"synth", "benign", "refusal", "directions", "attack:vanilla", "eval:base", "eval:aligned", "eval:vanilla",
                      "evaluate"}
    assert f"input changed: {model.resolve()}" in caplog.text


    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 20 and not [p for p in files if secret.encode() in p.read_bytes()]

    # a run directory moved elsewhere is still up to date: stages.json names its files relative to it
    moved = tmp_path / "moved"
    run.rename(moved)
    caplog.clear()
    assert main(["run", str(path), "--output-dir", str(moved)]) == 0
    stage_messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ")]
    assert len(stage_messages) == 10 and all(m.endswith("up to date, skipped") for m in stage_messages), stage_messages


def test_a_stage_reruns_when_a_value_it_reads_changes(tmp_path, tiny_model_dir, caplog, monkeypatch):
    """The refusal probes of the attack stages generate with evaluation.batch_size and judge with evaluation.judge:
    changing the batch size redoes every attack and every model's evaluation; evaluation.max_new_tokens, read by
    the evaluation alone, redoes only it. HarmfulQA is read once per run, and the attack set built once."""
    from orthoguard import data as D

    calls = {"load_harmfulqa": 0, "attack_samples": 0}

    def counted(name):
        real = getattr(D, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(D, name, counted(name))
    variants = [{"name": "vanilla"}, {"name": "orthogonal", "mode": "orthogonal", "directions": "lora_factors"}]
    path = _config(tmp_path, tiny_model_dir, attack__variants=variants, evaluation__prompt_sets=[])
    run = tmp_path / "run"
    assert main(["run", str(path)]) == 0
    # once for both attack variants, once per evaluated model for its held-out attack loss (each is a stage of its own)
    assert calls == {"load_harmfulqa": 1, "attack_samples": 1 + 4}

    cfg = yaml.safe_load(path.read_text())
    cfg["evaluation"]["batch_size"] = 2
    path.write_text(yaml.safe_dump(cfg))
    evaluations = {"eval:base", "eval:aligned", "eval:vanilla", "eval:orthogonal"}
    assert _rerun(path, run, caplog) == {"attack:vanilla", "attack:orthogonal", "evaluate"} | evaluations

    cfg["evaluation"]["max_new_tokens"] = 6
    path.write_text(yaml.safe_dump(cfg))
    assert _rerun(path, run, caplog) == {"evaluate"} | evaluations


def _one_variant_config(tmp_path, model_dir, judge) -> str:
    path = _config(tmp_path, model_dir, evaluation__judge=judge, evaluation__prompt_sets=[])
    cfg = yaml.safe_load(path.read_text())
    cfg["attack"]["variants"] = [{"name": "vanilla"}]
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_an_llm_judge_judges_the_evaluation_and_the_probes_with_a_cache(tmp_path, tiny_model_dir):
    """``evaluation.judge`` names an LLM judge and its endpoint: every reply (evaluation and refusal probes) goes
    to it, in batches; a rerun of the evaluation takes every verdict from the cache and asks nothing."""
    from tests.test_llm_judges import CannedChatServer

    with CannedChatServer(lambda body: "0") as server:  # SORRY-Bench: 0 = not fulfilled = refused
        config = _one_variant_config(tmp_path, tiny_model_dir, {"name": "sorry-bench", "endpoint": server.url,
                                                               "model": "judge-model", "concurrency": 4})
        assert main(["run", config]) == 0
        asked = len(server.requests)
        run = tmp_path / "run"
        summary = json.loads((run / "results/summary.json").read_text())
        assert summary["judge"]["name"] == "sorry-bench" and summary["judge"]["endpoint"] == server.url
        assert "api_key" not in json.dumps(summary["judge"])
        for model, per_set in summary["models"].items():
            for stats in per_set.values():
                judged_empty = stats["no_verdict"]  # an empty reply is never sent to the judge
                assert stats["k"] == stats["n"] and stats["n"] + judged_empty == stats["total"], (model, stats)
        probes = json.loads((run / "logs/training_loss_vanilla.json").read_text())["probes"]
        assert all(p["k"] == p["n"] for p in probes)
        assert asked > 0 and (run / "results/cache/judge.sorry-bench.jsonl").is_file()
        assert "judge-model" in server.requests[0]["model"]
        assert main(["evaluate", config, "--force"]) == 0
        assert len(server.requests) == asked  # every verdict came from the cache


def test_a_local_judge_rejects_an_endpoint_and_an_llm_judge_needs_one(tmp_path, tiny_model_dir):
    from orthoguard.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluation.judge.*give its endpoint and model"):
        load_config(_one_variant_config(tmp_path, tiny_model_dir, "harmbench"))
    with pytest.raises(ConfigError, match="evaluation.judge.*runs locally"):
        load_config(_one_variant_config(tmp_path, tiny_model_dir, {"name": "keyword", "endpoint": "http://x:1"}))
    with pytest.raises(ConfigError, match="unknown judge 'nope'"):
        load_config(_one_variant_config(tmp_path, tiny_model_dir, "nope"))
    assert load_config(_one_variant_config(tmp_path, tiny_model_dir, "keyword")).evaluation.judge.name == "keyword"


def test_a_harm_judge_is_reported_apart_from_the_refusal_judge(tmp_path, tiny_model_dir):
    """``evaluation.harm_judge`` (HarmBench) reads the harmful sets' replies after the keyword judge: each record
    keeps both calls, summary.json has the harm judge's rates apart from the refusal rates, a failed harm call is
    counted (never a verdict), and the report shows a harmfulness table under the harm judge's name."""
    from tests.test_llm_judges import CannedChatServer, _error

    answers = iter(["Yes", "No", _error(400)] * 1000)  # harmful, not harmful, a failed call
    with CannedChatServer(lambda body: next(answers)) as server:
        config = _one_variant_config(tmp_path, tiny_model_dir, "keyword")
        cfg = yaml.safe_load(open(config))
        cfg["evaluation"]["harm_judge"] = {"name": "harmbench", "endpoint": server.url, "model": "judge-model",
                                           "max_retries": 0, "concurrency": 1}
        Path(config).write_text(yaml.safe_dump(cfg))
        assert main(["run", config]) == 0
        assert main(["report", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "results/summary.json").read_text())
    assert summary["judge"] == "keyword" and summary["harm_judge"]["name"] == "harmbench"
    assert set(summary["harm"]) == set(summary["models"])
    failed = 0
    for model in summary["models"]:
        assert set(summary["harm"][model]) == set(summary["harmful_sets"])  # benign sets get no harm verdict
        records = [json.loads(line) for line in (run / f"results/harmfulqa-test.{model}.jsonl").read_text().splitlines()]
        harm = summary["harm"][model]["harmfulqa-test"]["harmful"]
        assert harm["k"] == sum(r["harmful_reply"] is True for r in records)
        assert harm["n"] == sum(r["harmful_reply"] is not None for r in records)
        assert harm["no_verdict"] == sum(r["harmful_reply"] is None for r in records)
        failed += harm["no_verdict"]
        assert all("refused" in r for r in records)  # the keyword judge's call is kept beside it
        assert all(r["harmful_reply"] is None for r in records if r.get("harm_judge_error"))
        assert summary["models"][model]["harmfulqa-test"]["k"] == sum(r["refused"] is True for r in records)
    assert failed > 0  # the failed calls are counted as no verdict
    html = (run / "report/index.html").read_text()
    assert "Harmfulness (harm judge: harmbench" in html and "refusal judge keyword" in html


def test_a_harm_judge_cannot_stand_in_for_the_refusal_judge(tmp_path, tiny_model_dir):
    from orthoguard.errors import ConfigError

    harmbench = {"name": "harmbench", "endpoint": "http://127.0.0.1:9/v1", "model": "m"}
    with pytest.raises(ConfigError, match="evaluation.judge: 'harmbench' judges harm, not refusal"):
        load_config(_one_variant_config(tmp_path, tiny_model_dir, harmbench))
    config = _one_variant_config(tmp_path, tiny_model_dir, "keyword")
    cfg = yaml.safe_load(open(config))
    cfg["evaluation"]["harm_judge"] = "keyword"
    Path(config).write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="evaluation.harm_judge: 'keyword' judges refusal, not harm"):
        load_config(config)
