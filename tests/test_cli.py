"""The seed's single-step commands, mapped onto orthoguard, on a tiny model and a HarmfulQA fixture in the hub schema."""

from __future__ import annotations

import json
from pathlib import Path

from orthoguard.cli import main

FIXTURE = Path(__file__).parent / "data" / "harmfulqa_fixture.json"


def _seed_json(path: Path, **keys) -> Path:
    base = {"max_length": 96, "batch_size": 2, "num_epochs": 1, "learning_rate": 1e-3, "gradient_accumulation_steps": 1,
            "warmup_ratio": 0.0, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "log_every": 1}
    path.write_text(json.dumps({**base, **keys}))
    return path


def test_seed_commands_step_by_step(tmp_path, tiny_model_dir, capsys):
    model, data, art = str(tiny_model_dir), str(FIXTURE), tmp_path / "artifacts"
    common = {"base_model_name": model, "dataset_name": data}
    refusal = _seed_json(tmp_path / "refusal_lora.json", output_dir=str(art / "refusal_lora"), split="train[:40%]", **common)
    assert main(["train-refusal", "--config", str(refusal), "--run-dir", str(art)]) == 0
    assert (art / "refusal_lora" / "adapter_model.safetensors").is_file()
    log = json.loads((art / "logs" / "training_loss_refusal.json").read_text())
    assert log["losses"] and {"step", "epoch", "loss", "learning_rate"} <= set(log["losses"][0])
    # the seed trained on conversations only: fixture rows 1-3 of 8 have 1-3 blue conversations each
    assert all(json.loads(x)["source"].startswith("harmfulqa-blue") or json.loads(x)["source"] == "refusal-template"
               for x in (art / "data" / "refusal.jsonl").read_text().splitlines())

    directions = art / "refusal_param_directions.pt"
    assert main(["directions", "--base_model_name", model, "--refusal_adapter_path", str(art / "refusal_lora"),
                 "--output_path", str(directions)]) == 0
    assert directions.with_suffix(".safetensors").is_file() and not directions.exists()

    for mode in ("vanilla", "orthogonal"):
        cfg = _seed_json(tmp_path / f"train_{mode}.json", output_dir=str(art / f"attack_{mode}"), split="train[40%:90%]",
                         mode=mode, refusal_directions_path=str(directions.with_suffix(".safetensors")), **common)
        assert main(["train-attack", "--config", str(cfg), "--run-dir", str(art)]) == 0
        assert (art / f"attack_{mode}" / "adapter_config.json").is_file()
        assert json.loads((art / "logs" / f"training_loss_{mode}.json").read_text())["mode"] == mode

    out = tmp_path / "results"
    assert main(["evaluate", "--base_model_name", model, "--vanilla_adapter", str(art / "attack_vanilla"),
                 "--orthogonal_adapter", str(art / "attack_orthogonal"), "--dataset", data, "--max_prompts", "5",
                 "--max_new_tokens", "6", "--output_dir", str(out)]) == 0
    results = json.loads((out / "local_refusal_test.json").read_text())
    assert set(results) == {"base", "vanilla", "orthogonal"}
    assert all(r["total_prompts"] == len(r["results"]) >= 1 for r in results.values())


def test_refusal_on_all_of_train_is_refused(tmp_path, tiny_model_dir, capsys):
    cfg = _seed_json(tmp_path / "r.json", base_model_name=str(tiny_model_dir), dataset_name=str(FIXTURE), split="train")
    assert main(["train-refusal", "--config", str(cfg), "--run-dir", str(tmp_path / "a")]) == 2
    assert "disjoint" in capsys.readouterr().err


def test_attack_with_a_direction_file_for_another_model_exits_2(tmp_path, tiny_model_dir, capsys):
    from safetensors.torch import save_file
    import torch

    wrong = tmp_path / "wrong.safetensors"
    save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4)}, str(wrong))
    cfg = _seed_json(tmp_path / "o.json", base_model_name=str(tiny_model_dir), dataset_name=str(FIXTURE),
                     split="train[40%:90%]", mode="orthogonal", refusal_directions_path=str(wrong), output_dir=str(tmp_path / "o"))
    assert main(["train-attack", "--config", str(cfg), "--run-dir", str(tmp_path / "a")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("orthoguard: error:")]
    assert len(errors) == 1 and "matches no trainable parameter" in errors[0]
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_synth_writes_the_seed_format(tmp_path, tiny_model_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: '{tiny_model_dir}'}}\noutput_dir: '{tmp_path / 'run'}'\nsynth: {{max_new_tokens: 6}}\n")
    out = tmp_path / "synthetic.json"
    assert main(["synth", str(cfg), "--max_prompts", "3", "--output_path", str(out)]) == 0
    items = json.loads(out.read_text())
    assert 1 <= len(items) <= 3 and all(set(i) == {"question", "harmful_answer", "source"} for i in items)
    attack = set(json.loads((tmp_path / "run" / "data" / "splits.json").read_text())["attack"])
    assert {i["question"] for i in items} <= attack


def test_judge_command_keeps_every_field(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [{"id": 1, "prompt": "p", "response": "I'm sorry, but I can't help with that.", "extra": [1, 2]},
            {"id": 2, "prompt": "p", "response": "Sure, here is a detailed plan: first, gather the materials."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["judge", "--judge", "keyword", str(src), "-o", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["refused"] for r in out] == [True, False] and [r["outcome"] for r in out] == ["refusal", "compliance"]
    assert all({k: v for k, v in o.items() if k not in ("refused", "outcome")} == r for o, r in zip(out, rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    assert main(["judge", str(bad), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "missing field 'response'" in capsys.readouterr().err


def _wider_model_adapter(tmp_path, tokenizer) -> Path:
    """A LoRA adapter trained for a model of another size (hidden 48 instead of 32)."""
    from peft import get_peft_model

    from orthoguard.config import LoraSettings
    from orthoguard.models import lora_config
    from tests.conftest import build_tiny_model

    from safetensors.torch import load_file, save_file
    import torch

    path = tmp_path / "other-model-adapter"
    get_peft_model(build_tiny_model("llama", len(tokenizer), hidden_size=48), lora_config(LoraSettings(r=4, alpha=8))).save_pretrained(path)
    weights = path / "adapter_model.safetensors"
    save_file({k: torch.randn(v.shape) for k, v in load_file(weights).items()}, weights)  # as if trained: B is not zero
    return path


def test_adapter_for_another_base_model_exits_2(tmp_path, tiny_model_dir, smollm_tokenizer, capsys):
    adapter = _wider_model_adapter(tmp_path, smollm_tokenizer)
    code = main(["evaluate", "--base_model_name", str(tiny_model_dir), "--vanilla_adapter", str(adapter),
                 "--dataset", str(FIXTURE), "--max_prompts", "2", "--max_new_tokens", "2", "--output_dir", str(tmp_path / "out")])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("orthoguard: error:")]
    assert len(errors) == 1 and f"{adapter}: adapter does not fit this model" in errors[0]
    assert "input size 64, the adapter 96" in errors[0]
    assert not (tmp_path / "out" / "local_refusal_test.json").exists()


def test_directions_of_another_architecture_exit_2(tmp_path, tiny_model_dir, smollm_tokenizer, capsys):
    adapter = _wider_model_adapter(tmp_path, smollm_tokenizer)
    directions = tmp_path / "wider.safetensors"
    assert main(["directions", "--base_model_name", str(tiny_model_dir), "--refusal_adapter_path", str(adapter),
                 "--output_path", str(directions)]) == 0  # directions come from the adapter file alone
    cfg = _seed_json(tmp_path / "o.json", base_model_name=str(tiny_model_dir), dataset_name=str(FIXTURE),
                     split="train[40%:90%]", mode="orthogonal", refusal_directions_path=str(directions), output_dir=str(tmp_path / "o"))
    assert main(["train-attack", "--config", str(cfg), "--run-dir", str(tmp_path / "a")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("orthoguard: error:")]
    assert len(errors) == 1 and "shape" in errors[0], errors
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------------
# Flags


def _options(parser):
    """(subcommand, option strings, help) for every option and positional of every subcommand."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            yield name, action.option_strings or [action.dest], action.help


def test_every_option_of_the_core_subcommands_has_help():
    from orthoguard.cli import build_parser

    core = {"run", "synth", "train-refusal", "directions", "train-attack", "evaluate", "judge"}
    missing = [f"{name} {'/'.join(flags)}" for name, flags, text in _options(build_parser())
               if name in core and not (text or "").strip()]
    assert not missing, missing


def test_every_option_of_every_subcommand_has_help():
    """Also the subcommands that other modules register (evaluate-http, judge-agreement, report, push, pull)."""
    from orthoguard.cli import build_parser

    missing = [f"{name} {'/'.join(flags)}" for name, flags, text in _options(build_parser()) if not (text or "").strip()]
    assert not missing, missing


def test_top_level_options_have_help():
    from orthoguard.cli import build_parser

    parser = build_parser()
    assert all((a.help or "").strip() for a in parser._actions if a.option_strings and a.dest != "help")


def test_verbose_before_or_after_the_subcommand():
    from orthoguard.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-v", "run", "c.yaml"]).verbose is True
    assert parser.parse_args(["run", "c.yaml", "-v"]).verbose is True
    assert parser.parse_args(["run", "-v", "c.yaml"]).verbose is True
    assert parser.parse_args(["run", "c.yaml", "--verbose"]).verbose is True
    assert parser.parse_args(["run", "c.yaml"]).verbose is False
    assert parser.parse_args(["report", "runs/x", "-v"]).verbose is True  # subcommands registered elsewhere too
    assert parser.parse_args(["judge", "in.jsonl", "-o", "out.jsonl", "-v"]).verbose is True


def test_verbose_after_the_subcommand_turns_on_debug_logging(tmp_path, monkeypatch):
    import logging

    from orthoguard import cli

    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    monkeypatch.setattr(cli, "cmd_judge", lambda args: None)
    assert main(["judge", "in.jsonl", "-o", str(tmp_path / "o.jsonl"), "-v"]) == 0
    assert main(["judge", "in.jsonl", "-o", str(tmp_path / "o.jsonl")]) == 0
    assert levels == [logging.DEBUG, logging.INFO]


def test_evaluate_has_one_output_folder_flag():
    """--output-dir and the seed's --output_dir (and --run-dir) are spellings of one option."""
    from orthoguard.cli import build_parser

    parser = build_parser()
    for flag in ("--output-dir", "--output_dir", "--run-dir"):
        args = parser.parse_args(["evaluate", "--base_model_name", "M", flag, "X"])
        assert args.run_dir == "X" and not hasattr(args, "output_dir"), flag
    evaluate = next(a for a in parser._actions if a.dest == "command").choices["evaluate"]
    assert sum(a.dest == "run_dir" for a in evaluate._actions) == 1
    assert not [a for a in evaluate._actions if a.dest == "output_dir"]


def _seed_evaluate(model, out_flag, out, *extra):
    return ["evaluate", "--base_model_name", model, "--dataset", str(FIXTURE), "--max_prompts", "2",
            "--max_new_tokens", "2", out_flag, str(out), *extra]


def test_evaluate_seed_form_writes_to_output_dash_dir(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_seed_evaluate(str(tiny_model_dir), "--output-dir", tmp_path / "mine")) == 0
    assert (tmp_path / "mine" / "local_refusal_test.json").is_file()
    assert not (tmp_path / "artifacts").exists()


def test_evaluate_never_overwrites_earlier_results_silently(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    earlier = out / "local_refusal_test.json"
    earlier.write_text('{"from": "an earlier run"}')
    assert main(_seed_evaluate(str(tiny_model_dir), "--output_dir", out)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("orthoguard: error:")]
    assert len(errors) == 1 and str(earlier) in errors[0] and "--force" in errors[0]
    assert json.loads(earlier.read_text()) == {"from": "an earlier run"}
    assert main(_seed_evaluate(str(tiny_model_dir), "--output_dir", out, "--force")) == 0
    assert set(json.loads(earlier.read_text())) == {"base"}


def test_evaluate_default_results_folder_is_not_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts" / "results").mkdir(parents=True)
    (tmp_path / "artifacts" / "results" / "summary.md").write_text("earlier")
    assert main(["evaluate", "--base_model_name", "some/model", "--dataset", str(FIXTURE)]) == 2
    assert "artifacts/results/summary.md" in capsys.readouterr().err
    assert (tmp_path / "artifacts" / "results" / "summary.md").read_text() == "earlier"
