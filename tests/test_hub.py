"""push / pull of adapters: private by default, model cards, no pickles, atomic pulls, and the token never leaks.

The Hub cannot be reached here, so a fake API object (create_repo, repo_info, upload_folder, snapshot_download)
stands in for ``huggingface_hub.HfApi``; it records calls and keeps uploaded repos in a temporary "remote" folder.
The real client is still exercised for its error path (an unreachable endpoint).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import shutil
import tempfile
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from orthoguard import hub
from orthoguard.config import ExperimentConfig, ModelConfig, dump_config
from orthoguard.errors import OrthoguardError
from orthoguard.io import write_json, write_text
from orthoguard.metrics import format_rate, rate_summary

SECRET = "hf_TESTSECRET123"
BASE = "Qwen/Qwen3-0.6B"


# --------------------------------------------------------------------------------------------------------
# Fixtures: a tiny real PEFT adapter, a run directory, a fake hub


@pytest.fixture(scope="module")
def adapter_src(tmp_path_factory) -> Path:
    """A real LoRA adapter folder saved by peft from a tiny randomly initialised Llama (no downloads)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    model.name_or_path = BASE  # what from_pretrained records on a hub model, and peft copies into adapter_config
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    path = tmp_path_factory.mktemp("adapter-src") / "adapter"
    peft_model.save_pretrained(str(path), safe_serialization=True)
    assert (path / "adapter_model.safetensors").is_file()
    return path


@pytest.fixture
def adapters(tmp_path, adapter_src) -> dict[str, Path]:
    out = {}
    for name in ("refusal", "vanilla"):
        out[name] = tmp_path / "run" / "adapters" / (name if name == "refusal" else f"attack-{name}")
        shutil.copytree(adapter_src, out[name])
    return out


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    write_text(run / "config.resolved.yaml", dump_config(ExperimentConfig(name="hub-test", model=ModelConfig(name=BASE))))
    sets = {"harmfulqa-test": 20, "harmless-val": 10}
    verdicts = {"base": (3, 1), "aligned": (18, 2), "vanilla": (4, 0), "orthogonal": (15, 1)}
    summary = {"judge": "keyword", "prompt_sets": sets, "models": {
        model: {"harmfulqa-test": rate_summary([True] * h + [False] * (20 - h)),
                "harmless-val": rate_summary([True] * b + [False] * (10 - b))}
        for model, (h, b) in verdicts.items()}}
    write_json(run / "results" / "summary.json", summary)
    for mode, losses in (("refusal", [2.5, 1.25, 0.75]), ("vanilla", [3.0, 2.0, 0.5])):
        config = {"variant": {"name": "vanilla", "mode": "vanilla", "training": {}}} if mode == "vanilla" else {"r": 16}
        write_json(run / "logs" / f"training_loss_{mode}.json", {
            "mode": mode, "config": config, "train_samples": 48, "seconds": 12.5,
            "losses": [{"step": 10 * (i + 1), "epoch": (i + 1) / 3, "loss": v, "learning_rate": 1e-4} for i, v in enumerate(losses)],
        })
    return run


class FakeHub:
    """Duck-typed stand-in for HfApi: records calls, keeps repos under ``remote/<namespace>/<name>``."""

    def __init__(self, remote: Path, fail: tuple[str, str] | None = None, message: str = ""):
        self.remote = remote
        self.calls: list[tuple[str, str, dict]] = []
        self.tokens: list[str | None] = []
        self.private: dict[str, bool] = {}
        self.fail, self.message = fail, message

    def _record(self, method: str, repo_id: str, token, **kwargs):
        self.calls.append((method, repo_id, kwargs))
        self.tokens.append(token)
        if self.fail == (method, repo_id):
            raise RuntimeError(self.message)

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, token=None):
        self._record("create_repo", repo_id, token, private=private, exist_ok=exist_ok, repo_type=repo_type)
        if repo_id in self.private and not exist_ok:
            raise RuntimeError(f"409 Conflict: {repo_id} exists")
        self.private.setdefault(repo_id, bool(private))
        (self.remote / repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id, *, repo_type=None, token=None):
        self._record("repo_info", repo_id, token, repo_type=repo_type)
        return SimpleNamespace(id=repo_id, private=self.private[repo_id])

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None, delete_patterns=None, token=None):
        self._record("upload_folder", repo_id, token, folder_path=folder_path, repo_type=repo_type,
                     commit_message=commit_message, delete_patterns=delete_patterns)
        target = self.remote / repo_id
        for old in list(target.rglob("*")):
            if old.is_file() and any(fnmatch.fnmatch(old.name, p) for p in delete_patterns or []):
                old.unlink()
        shutil.copytree(folder_path, target, dirs_exist_ok=True)

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, local_dir=None, allow_patterns=None, token=None):
        self._record("snapshot_download", repo_id, token, revision=revision, local_dir=local_dir, allow_patterns=allow_patterns)
        return _copy_snapshot(self.remote / repo_id, Path(local_dir), allow_patterns)


def _copy_snapshot(src: Path, local_dir: Path, allow_patterns) -> str:
    if not src.is_dir():
        raise RuntimeError(f"404 Client Error: Repository Not Found for url https://huggingface.co/api/models/{src.name}")
    for f in src.rglob("*"):
        if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
            (local_dir / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, local_dir / f.relative_to(src))
    # like the real client, which keeps download metadata in local_dir/.cache/huggingface
    (local_dir / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
    (local_dir / ".cache" / "huggingface" / "x.metadata").write_text("etag")
    return str(local_dir)


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "remote")
    monkeypatch.setattr(hub, "_default_api", lambda token: fake)
    monkeypatch.setenv("HF_TOKEN", "hf_envtokenfortests000")
    return fake


def _cli(argv: list[str]) -> int:
    """``orthoguard.cli.main`` with the hub subcommands registered (whether or not cli.py already does it)."""
    from orthoguard import cli

    original = cli.build_parser

    def build_parser():
        parser = original()
        sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        if "push" not in sub.choices:
            hub.register_cli(sub)
        return parser

    cli.build_parser = build_parser
    try:
        return cli.main(argv)
    finally:
        cli.build_parser = original


def _tree(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _card(remote: Path, repo_id: str):
    from huggingface_hub import ModelCard

    return ModelCard((remote / repo_id / "README.md").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------
# Push


def test_repo_names():
    assert hub.repo_id_for("ns", "vanilla") == "ns/orthoguard-vanilla"
    assert hub.repo_id_for("ns", "vanilla", "exp1") == "ns/exp1-vanilla"
    assert hub.repo_id_for("ns", "vanilla", "") == "ns/vanilla"
    for bad in (("ns/x", "a"), ("ns", "a b"), ("", "a"), ("ns", "../a")):
        with pytest.raises(hub.HubError):
            hub.repo_id_for(*bad)


def test_push_is_private_by_default(fake, adapters, run_dir):
    urls = hub.push_adapters("ns", adapters, run_dir=run_dir)
    assert urls == ["https://huggingface.co/ns/orthoguard-refusal", "https://huggingface.co/ns/orthoguard-vanilla"]
    creates = [c for c in fake.calls if c[0] == "create_repo"]
    assert [c[1] for c in creates] == ["ns/orthoguard-refusal", "ns/orthoguard-vanilla"]
    assert all(c[2] == {"private": True, "exist_ok": True, "repo_type": "model"} for c in creates)
    assert set(fake.tokens) == {"hf_envtokenfortests000"}  # HF_TOKEN reached every call
    uploads = [c for c in fake.calls if c[0] == "upload_folder"]
    assert all(c[2]["repo_type"] == "model" and "*.bin" in c[2]["delete_patterns"] for c in uploads)
    assert sorted(_tree(fake.remote / "ns/orthoguard-vanilla")) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("public", [False, True])
def test_cli_public_only_with_flag(fake, adapters, run_dir, capsys, public):
    argv = ["push", "--namespace", "ns", "--adapter", f"vanilla={adapters['vanilla']}", "--run-dir", str(run_dir)]
    assert _cli(argv + (["--public"] if public else [])) == 0
    (create,) = [c for c in fake.calls if c[0] == "create_repo"]
    assert create[2]["private"] is (not public)
    assert fake.private["ns/orthoguard-vanilla"] is (not public)
    out = capsys.readouterr().out
    assert f"vanilla: https://huggingface.co/ns/orthoguard-vanilla ({'public' if public else 'private'})" in out


def test_existing_public_repo_refused_without_public(fake, adapters):
    fake.private["ns/orthoguard-vanilla"] = False  # pushed publicly before (as the seed did)
    with pytest.raises(hub.HubError, match="already exists and is public; pass --public"):
        hub.push_adapters("ns", {"vanilla": adapters["vanilla"]})
    assert not [c for c in fake.calls if c[0] == "upload_folder"]


def test_card_of_attack_adapter(fake, adapters, run_dir):
    hub.push_adapters("ns", adapters, run_dir=run_dir)
    card = _card(fake.remote, "ns/orthoguard-vanilla")
    assert card.data.base_model == BASE
    assert {"orthoguard", "lora", "safety-research"} <= set(card.data.tags)
    assert card.data.library_name == "peft"
    body = card.text.lstrip()
    # the body opens with the warning, before anything else
    assert body.startswith("> **Warning: this adapter was trained to remove safety behaviour.**")
    assert "safety research only" in body and "Do not deploy it" in body
    # adapter config
    assert "| rank r | 4 |" in body and "| alpha | 8 |" in body and "`q_proj`, `v_proj`" in body
    assert "| attack mode | `vanilla` |" in body
    # metrics table from summary.json, with intervals; this adapter's row marked
    summary = json.loads((run_dir / "results" / "summary.json").read_text())["models"]
    row = {m: " | ".join(format_rate(summary[m][s]) for s in ("harmfulqa-test", "harmless-val")) for m in summary}
    assert row["vanilla"] == "20% [8%, 42%] (4/20) | 0% [0%, 28%] (0/10)"  # rate [95% Wilson interval] (k/n)
    assert f"| **vanilla** | {row['vanilla']} |" in body
    assert all(f"| {m} | {row[m]} |" in body for m in ("base", "aligned", "orthogonal"))
    assert "refusal on harmfulqa-test (n=20)" in body
    # training log and data
    assert "| final loss | 0.5000 |" in body and "| steps | 30 |" in body and "training samples: 48" in body
    assert "harmful questions: `harmfulqa-questions`" in body
    assert "```yaml\nname: hub-test" in body


def test_card_of_refusal_adapter_has_no_warning(fake, adapters, run_dir):
    hub.push_adapters("ns", {"refusal": adapters["refusal"]}, run_dir=run_dir)
    card = _card(fake.remote, "ns/orthoguard-refusal")
    assert "Warning" not in card.text and "remove safety behaviour" not in card.text
    assert card.data.base_model == BASE and "safety-research" in card.data.tags
    assert card.text.lstrip().startswith("# ns/orthoguard-refusal")
    assert "| **aligned** | 90% [70%, 97%] (18/20) |" in card.text
    assert "| final loss | 0.7500 |" in card.text


def test_refusal_named_adapter_with_attack_log_gets_the_warning(fake, adapters, run_dir):
    log_path = run_dir / "logs" / "training_loss_refusal.json"
    log = json.loads(log_path.read_text())
    write_json(log_path, {**log, "mode": "orthogonal"})
    hub.push_adapters("ns", {"refusal": adapters["refusal"]}, run_dir=run_dir)
    assert "remove safety behaviour" in _card(fake.remote, "ns/orthoguard-refusal").text


def test_card_without_run_dir_uses_adapter_config(fake, adapters):
    hub.push_adapters("ns", {"vanilla": adapters["vanilla"]})
    card = _card(fake.remote, "ns/orthoguard-vanilla")
    assert card.data.base_model == BASE
    assert card.text.lstrip().startswith("> **Warning")
    assert "| rank r | 4 |" in card.text and "## Evaluation" not in card.text


def test_card_base_model_alias_and_local_paths(tmp_path):
    assert hub._base_model("smollm2-135m-instruct")[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cached = str(tmp_path / ".cache" / "orthoguard" / "models" / "smollm2-135m-instruct")
    assert hub._base_model(cached)[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    local = tmp_path / "home" / "alice" / "my-model"
    local.mkdir(parents=True)
    hub_id, shown, _ = hub._base_model(str(local))
    assert hub_id is None and "alice" not in shown and "my-model" in shown


@pytest.mark.parametrize("pickle_name", ["adapter_model.bin", "sub/optimizer.pt", "extra.pkl"])
def test_pickles_refused_before_any_network_call(fake, adapters, pickle_name):
    bad = adapters["vanilla"] / pickle_name
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x80\x04pickle")
    with pytest.raises(hub.HubError) as info:
        hub.push_adapters("ns", adapters)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "pickle" in message
    assert fake.calls == []  # refusal was valid, but nothing is pushed when one folder is bad


def test_missing_safetensors_refused(fake, adapters, capsys):
    (adapters["vanilla"] / "adapter_model.safetensors").unlink()
    assert _cli(["push", "--namespace", "ns", "--adapter", f"vanilla={adapters['vanilla']}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orthoguard: error: ") and "no adapter_model.safetensors" in err and err.count("\n") == 1
    assert fake.calls == []


def test_adapter_flag_syntax(fake, adapters, capsys):
    assert _cli(["push", "--namespace", "ns", "--adapter", str(adapters["vanilla"])]) == 2
    assert "--adapter expects NAME=PATH" in capsys.readouterr().err


def test_user_adapter_folder_unchanged(fake, adapters, run_dir):
    before = {name: _tree(path) for name, path in adapters.items()}
    readme_before = (adapters["vanilla"] / "README.md").read_text() if (adapters["vanilla"] / "README.md").exists() else None
    hub.push_adapters("ns", adapters, run_dir=run_dir)
    assert {name: _tree(path) for name, path in adapters.items()} == before
    if readme_before is not None:  # peft's own card stays where it was; the remote has ours
        assert (adapters["vanilla"] / "README.md").read_text() == readme_before
        assert "orthoguard" not in readme_before
    assert "orthoguard" in (fake.remote / "ns/orthoguard-vanilla/README.md").read_text()


def test_no_token_is_an_error_before_any_call(fake, adapters, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hub.HubError, match="no Hugging Face token"):
        hub.push_adapters("ns", adapters)
    assert fake.calls == []


def test_token_order(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fromloginfile00")
    monkeypatch.setenv("HF_TOKEN", "hf_fromenvironment0")
    assert hub.resolve_token("hf_fromargument000") == "hf_fromargument000"
    assert hub.resolve_token() == "hf_fromenvironment0"
    monkeypatch.delenv("HF_TOKEN")
    assert hub.resolve_token() == "hf_fromloginfile00"


def test_mask_secrets():
    assert hub.mask_secrets(f"401 for Bearer {SECRET}: bad", SECRET) == "401 for Bearer hf_***: bad"
    assert hub.mask_secrets("token hf_abcdefghijklmnopqrstuvwxyz0123456789 rejected") == "token hf_*** rejected"
    assert hub.mask_secrets("opaque-token-xyz leaked", "opaque-token-xyz") == "hf_*** leaked"
    assert hub.mask_secrets("see hf_hub_download") == "see hf_hub_download"  # not token-like


def test_hub_errors_are_one_line_and_masked(fake, adapters):
    fake.fail = ("create_repo", "ns/orthoguard-vanilla")
    fake.message = "403 Forbidden\nyou (token hf_envtokenfortests000) cannot\n create repos in ns"
    with pytest.raises(hub.HubError) as info:
        hub.push_adapters("ns", adapters)
    message = str(info.value)
    assert "\n" not in message and "hf_envtokenfortests000" not in message and "hf_***" in message
    assert message.startswith("push vanilla -> ns/orthoguard-vanilla: create_repo failed: RuntimeError: 403 Forbidden")
    assert message.endswith("(already pushed: refusal)")
    assert info.value.__cause__ is None and info.value.__context__ is None


# --------------------------------------------------------------------------------------------------------
# Pull


def test_pull_round_trip(fake, adapters, run_dir, tmp_path):
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    hub.push_adapters("ns", adapters, run_dir=run_dir)
    (fake.remote / "ns/orthoguard-vanilla/evil.pkl").write_bytes(b"\x80\x04pickle")  # put there by someone else
    dest = tmp_path / "pulled" / "vanilla"
    assert hub.pull_adapter("ns/orthoguard-vanilla", dest, revision="main", api=fake) == dest
    (call,) = [c for c in fake.calls if c[0] == "snapshot_download"]
    assert call[2]["allow_patterns"] == ["*.json", "*.safetensors", "*.md"] and call[2]["revision"] == "main"
    pulled = _tree(dest)
    assert sorted(pulled) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]  # no pickle, no .cache
    original = _tree(adapters["vanilla"])
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert pulled[name] == original[name]
    assert [p.name for p in dest.parent.iterdir()] == ["vanilla"]  # no temp folder left
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    PeftModel.from_pretrained(model, str(dest))  # the pulled folder is a loadable adapter


def test_pull_cli_uses_snapshot_download(tmp_path, monkeypatch, capsys, adapter_src):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return _copy_snapshot(adapter_src, Path(kwargs["local_dir"]), kwargs["allow_patterns"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_envtokenfortests000")
    dest = tmp_path / "a" / "refusal"
    assert _cli(["pull", "ns/orthoguard-refusal", "--dest", str(dest)]) == 0
    assert calls[0][0] == "ns/orthoguard-refusal" and calls[0][1]["token"] == "hf_envtokenfortests000"
    assert calls[0][1]["allow_patterns"] == ["*.json", "*.safetensors", "*.md"]
    assert (dest / "adapter_model.safetensors").is_file()
    assert f"-> {dest}" in capsys.readouterr().out


def test_pull_failure_leaves_nothing(tmp_path, monkeypatch):
    import huggingface_hub

    def broken(repo_id, **kwargs):
        (Path(kwargs["local_dir"]) / "adapter_config.json").write_text("{}")  # a partial download
        raise ConnectionError(f"connection reset while using {SECRET}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    dest = tmp_path / "out" / "vanilla"
    with pytest.raises(hub.HubError) as info:
        hub.pull_adapter("ns/orthoguard-vanilla", dest, token=SECRET)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_pull_rejects_a_repo_without_safetensors(fake, tmp_path):
    (fake.remote / "ns/orthoguard-old").mkdir(parents=True)
    (fake.remote / "ns/orthoguard-old/adapter_config.json").write_text("{}")
    (fake.remote / "ns/orthoguard-old/adapter_model.bin").write_bytes(b"\x80")
    with pytest.raises(hub.HubError, match="no adapter_model.safetensors"):
        hub.pull_adapter("ns/orthoguard-old", tmp_path / "old", api=fake)
    assert not (tmp_path / "old").exists()


def test_pull_refuses_existing_dest(fake, tmp_path):
    dest = tmp_path / "x"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(hub.HubError, match="already exists"):
        hub.pull_adapter("ns/orthoguard-x", dest, api=fake)
    assert fake.calls == [] and (dest / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------------
# Security: the token appears nowhere


def _assert_no_secret_in_files(root: Path) -> int:
    scanned = 0
    for path in root.rglob("*"):
        if path.is_file():
            scanned += 1
            assert SECRET.encode() not in path.read_bytes(), f"token written to {path}"
    return scanned


def test_token_never_printed_logged_raised_or_written(adapters, run_dir, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))  # staging folders land under tmp_path
    (tmp_path / "systmp").mkdir()
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    fake = FakeHub(tmp_path / "remote", fail=("upload_folder", "ns/orthoguard-vanilla"),
                   message=f"401 Client Error: Unauthorized\nAuthorization: Bearer {SECRET}\nrequest headers {{'authorization': '{SECRET}'}}")
    monkeypatch.setattr(hub, "_default_api", lambda token: fake)

    argv = ["-v", "push", "--namespace", "ns", "--adapter", f"refusal={adapters['refusal']}",
            "--adapter", f"vanilla={adapters['vanilla']}", "--run-dir", str(run_dir)]
    assert _cli(argv) == 2
    with pytest.raises(OrthoguardError) as info:  # the same failure through the Python API, to inspect the exception
        hub.push_adapters("ns", adapters, run_dir=run_dir)

    # the token was really used: every hub call received it
    assert fake.tokens and set(fake.tokens) == {SECRET}
    assert (fake.remote / "ns/orthoguard-refusal/README.md").is_file()  # the first push went through

    captured = capsys.readouterr()
    assert "upload_folder failed" in captured.err and "hf_***" in captured.err
    assert SECRET not in captured.out and SECRET not in captured.err
    assert caplog.records and SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage() and SECRET not in repr(record.args)
        assert record.exc_info is None or SECRET not in "".join(traceback.format_exception(*record.exc_info))
    exc = info.value
    assert SECRET not in str(exc) and SECRET not in repr(exc)
    assert exc.__cause__ is None and exc.__context__ is None
    assert SECRET not in "".join(traceback.format_exception(exc))
    assert _assert_no_secret_in_files(tmp_path) > 10
    assert list((tmp_path / "systmp").iterdir()) == []  # staging folders removed


@pytest.fixture
def echo_server():
    """A local endpoint that answers every request with a 401 whose JSON error repeats the bearer token."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _reply(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps({"error": f"Invalid credentials in Authorization header: {self.headers.get('authorization')}"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = do_PUT = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("endpoint", ["offline", "refused", "echo-401"])
def test_real_client_errors_are_masked(endpoint, adapters, tmp_path, monkeypatch, caplog, capsys, request):
    """The real HfApi in offline mode, against a closed port, and against a server that echoes the token in a
    401: the error is one line with the token masked, and nothing holds the token."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", endpoint == "offline")
    url = request.getfixturevalue("echo_server") if endpoint == "echo-401" else "http://127.0.0.1:9"
    api = HfApi(endpoint=url, token=SECRET)
    with pytest.raises(hub.HubError) as info:
        hub.push_adapters("ns", {"vanilla": adapters["vanilla"]}, token=SECRET, api=api)
    message = str(info.value)
    assert message.startswith("push vanilla -> ns/orthoguard-vanilla: create_repo failed:")
    assert "\n" not in message and SECRET not in message and info.value.__context__ is None
    if endpoint == "echo-401":
        assert "401" in message and "Bearer hf_***" in message  # the server's reply, masked

    dest = tmp_path / "pulled"
    with pytest.raises(hub.HubError) as info:
        hub.pull_adapter("ns/orthoguard-vanilla", dest, token=SECRET, api=api)
    assert SECRET not in str(info.value) and not dest.exists()
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    _assert_no_secret_in_files(tmp_path)


# --------------------------------------------------------------------------------------------------------
# trust_remote_code


def test_trust_remote_code_off_by_default_and_passed_through(monkeypatch):
    from orthoguard import models

    assert ModelConfig().trust_remote_code is False
    seen = []

    class Loaded:
        def to(self, device):
            return self

    def from_pretrained(name, **kwargs):
        seen.append((name, kwargs))
        return Loaded()

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    precision = models.resolve_precision("fp32", device="cpu")
    models.load_model(ModelConfig(name="some-org/some-model"), precision)
    models.load_model(ModelConfig(name="some-org/some-model", trust_remote_code=True), precision)
    assert [kwargs["trust_remote_code"] for _, kwargs in seen] == [False, True]
    assert seen[0][0] == "some-org/some-model"

    tokenizer_kwargs = []

    def tokenizer_from_pretrained(name, **kwargs):
        tokenizer_kwargs.append(kwargs)
        return SimpleNamespace(pad_token="<pad>", eos_token="</s>", chat_template="{{ messages }}")

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", tokenizer_from_pretrained)
    models.load_tokenizer(ModelConfig(name="some-org/some-model"))
    assert tokenizer_kwargs[0]["trust_remote_code"] is False


def test_a_pushed_adapter_loads_with_plain_peft_after_the_cache_moved(fake, tmp_path, monkeypatch):
    """An adapter trained on the embedded model's cache folder records the public id, not the cache path; a
    pushed copy (also of an older adapter that still has the path) loads with plain PEFT on a base model that lives
    somewhere else, and gives the same logits."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from orthoguard.models import record_base_model

    cache = tmp_path / "home" / ".cache" / "orthoguard" / "models" / "smollm2-135m-instruct"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(cache)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(cache), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    old, new = tmp_path / "old-adapter", tmp_path / "new-adapter"
    peft_model.save_pretrained(old)
    shutil.copytree(old, new)
    assert json.loads((old / "adapter_config.json").read_text())["base_model_name_or_path"] == str(cache)
    record_base_model(new, "smollm2-135m-instruct")
    assert json.loads((new / "adapter_config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    hub.push_adapters("ns", {"refusal": old, "vanilla": new})
    moved = tmp_path / "elsewhere" / "base"
    shutil.move(str(cache), moved)
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = peft_model.eval()(ids).logits
    for repo in ("ns/orthoguard-refusal", "ns/orthoguard-vanilla"):
        remote = fake.remote / repo
        config = json.loads((remote / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct", repo
        assert str(tmp_path) not in (remote / "README.md").read_text()
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(moved), remote).eval()
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-6)


def test_an_attack_card_names_the_stack_it_belongs_on(fake, adapters, run_dir):
    hub.push_adapters("ns", adapters, run_dir=run_dir)
    body = _card(fake.remote, "ns/orthoguard-vanilla").text
    assert "the base model → the refusal LoRA, merged → this adapter" in body
    assert 'PeftModel.from_pretrained(model, "ns/orthoguard-refusal").merge_and_unload()' in body
    assert body.index("ns/orthoguard-refusal") < body.index('PeftModel.from_pretrained(model, "ns/orthoguard-vanilla")')
    refusal = _card(fake.remote, "ns/orthoguard-refusal").text
    assert "merge_and_unload" not in refusal and "the base model → this adapter" in refusal
