"""CPU feature parsing and the default thread count, on fake cpuinfo text."""

from __future__ import annotations

import os

import pytest
import torch

from orthoguard import hardware as H

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""

SAPPHIRE_SMT = "".join(
    f"processor\t: {cpu}\nmodel name\t: Intel Xeon\nphysical id\t: 0\ncore id\t: {cpu // 2}\n"
    f"flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
    for cpu in range(8)
)

OLD_AVX2 = "processor\t: 0\nmodel name\t: Old\nflags\t\t: sse2 avx avx2 fma\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n"


def test_parses_flags_and_model():
    f = H.parse_cpuinfo(ZEN5)
    assert (f.avx2, f.avx512f, f.avx512_bf16, f.amx_bf16) == (True, True, True, False)
    assert f.model_name == "AMD EPYC" and f.source == "/proc/cpuinfo"
    assert H.prefers_bf16(f) and "avx512_bf16" in f.describe()


def test_bf16_only_with_native_bf16():
    assert H.prefers_bf16(H.parse_cpuinfo(SAPPHIRE_SMT))
    assert H.parse_cpuinfo(SAPPHIRE_SMT).amx_bf16
    old = H.parse_cpuinfo(OLD_AVX2)
    assert old.avx2 and not old.avx512f and not H.prefers_bf16(old)
    arm = H.parse_cpuinfo(ARM)
    assert not any((arm.avx2, arm.avx512f, arm.avx512_bf16, arm.amx_bf16)) and not H.prefers_bf16(arm)
    assert H.parse_cpuinfo("").source == "no flags in cpuinfo"


def test_unreadable_cpuinfo_falls_back(tmp_path):
    f = H.cpu_features(tmp_path / "missing")
    assert not H.prefers_bf16(f) and f.source.startswith("unreadable")


def test_physical_cores_count_smt_siblings_once():
    assert H.physical_cores(ZEN5, {0, 1}) == 2
    assert H.physical_cores(SAPPHIRE_SMT, set(range(8))) == 4
    assert H.physical_cores(SAPPHIRE_SMT, {0, 1}) == 1  # two siblings of one core
    assert H.physical_cores(SAPPHIRE_SMT, {0, 2, 5}) == 3
    assert H.physical_cores(ARM, {0, 1, 2}) == 3  # no core ids: every allowed CPU counts
    assert H.physical_cores("", {0, 1}) == 2
    assert H.physical_cores(ZEN5, {0, 1, 7}) == 3  # a CPU cpuinfo does not describe counts as a core


def test_default_threads_env_then_affinity(caplog):
    assert H.default_threads({"ORTHOGUARD_THREADS": "3"}, SAPPHIRE_SMT, set(range(8))) == 3
    assert H.default_threads({}, SAPPHIRE_SMT, set(range(8))) == 4
    assert H.default_threads({}, SAPPHIRE_SMT, {6, 7}) == 1
    assert H.default_threads({"ORTHOGUARD_THREADS": "zero"}, ZEN5, {0, 1}) == 2
    assert "ORTHOGUARD_THREADS" in caplog.text
    assert H.default_threads({"ORTHOGUARD_THREADS": "0"}, ZEN5, {0, 1}) == 2
    assert H.default_threads({}, ZEN5, set()) == 1


def test_configure_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    try:
        assert H.configure_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
        monkeypatch.setenv("ORTHOGUARD_THREADS", "2")
        assert H.configure_threads() == 2 and torch.get_num_threads() == 2
        with pytest.raises(ValueError):
            H.configure_threads(0)
    finally:
        torch.set_num_threads(before)


_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@pytest.fixture
def no_wait_settings(monkeypatch):
    """None of the wait variables set, and whatever a test sets undone afterwards (monkeypatch restores only what it
    touched, so each is set before it is removed)."""
    for var in _WAIT_VARS:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    return monkeypatch


def _proc_stat(tmp_path, running: int):
    path = tmp_path / "stat"
    path.write_text(f"cpu  1 2 3 4\nprocs_running {running}\nprocs_blocked 0\n")
    return path


def test_other_runnable_tasks_leaves_out_the_reader(tmp_path):
    assert H.other_runnable_tasks(_proc_stat(tmp_path, 1), samples=2, interval_s=0) == 0
    assert H.other_runnable_tasks(_proc_stat(tmp_path, 3), samples=2, interval_s=0) == 2
    assert H.other_runnable_tasks(tmp_path / "missing") is None
    (tmp_path / "odd").write_text("cpu 1 2 3\n")
    assert H.other_runnable_tasks(tmp_path / "odd") is None


@pytest.mark.parametrize(("running", "expected"), [
    (1, {"GOMP_SPINCOUNT": str(H.SPIN_COUNT), "KMP_BLOCKTIME": "1"}),  # nothing else runs: bounded spinning
    (2, {"OMP_WAIT_POLICY": "PASSIVE"}),  # another process wants a core: passive waiting
])
def test_prepare_environment_chooses_the_wait_by_what_else_runs(no_wait_settings, tmp_path, running, expected):
    assert H.prepare_environment(_proc_stat(tmp_path, running)) is False  # torch is imported already in the test process
    assert {var: os.environ[var] for var in _WAIT_VARS if var in os.environ} == expected


def test_prepare_environment_waits_passively_where_it_cannot_tell(no_wait_settings, tmp_path):
    H.prepare_environment(tmp_path / "missing")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize("var", _WAIT_VARS)
def test_prepare_environment_keeps_what_the_user_set(no_wait_settings, tmp_path, var):
    no_wait_settings.setenv(var, "7")
    H.prepare_environment(_proc_stat(tmp_path, 1))
    assert {v: os.environ[v] for v in _WAIT_VARS if v in os.environ} == {var: "7"}
    assert H.openmp_wait() == f"{var}=7"


_ALLOCATE_AND_FREE = """
import resource
from orthoguard.hardware import keep_freed_memory
applied = keep_freed_memory()
import torch
def step():  # a 64 MiB tensor (over glibc's largest mmap threshold) and a smaller one, both freed
    torch.empty(16 * 2**20).fill_(1.0), torch.empty(3 * 2**20).fill_(2.0)
for _ in range(20):  # the heap settles
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(H.platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_kept_freed_memory_is_reused_without_page_faults():
    """Large tensors allocated and freed again and again: glibc's default maps and faults in fresh pages every
    time, with keep_freed_memory the heap, once settled, serves them from memory it kept."""
    import subprocess
    import sys

    def faults(**env):
        out = subprocess.run([sys.executable, "-c", _ALLOCATE_AND_FREE], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}).stdout.split()
        return out[0] == "True", int(out[1])

    kept_applied, kept = faults(ORTHOGUARD_MALLOC="")
    default_applied, default = faults(ORTHOGUARD_MALLOC="default")
    assert kept_applied and not default_applied
    assert default > 20 * 10_000 and kept < default / 100, (kept, default)
