"""CPU features and thread settings: what the CPU can do natively, and how many torch threads to use.

``cpu_features()`` reads ``/proc/cpuinfo`` on Linux (other systems: all flags false, ``source`` says why), and
``prefers_bf16()`` is true only where the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX BF16). Without it,
bf16 autocast on CPU was 2-3x slower than fp32; with it, whether bf16 pays off depends on the work and is measured
by ``scripts/bench_generation.py`` and ``scripts/bench_training.py``.

``configure_threads(n)`` sets torch's intra-op threads to ``n``, or by default to the environment variable
``ORTHOGUARD_THREADS``, or else to the number of physical cores this process may run on (its CPU affinity, not the
machine's count: a container or ``taskset`` limits it). It sets inter-op threads to 1 (orthoguard runs one graph at
a time) and exports ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for child processes, unless they are set already.
``prepare_environment()``, called before torch is imported, lets idle OpenMP threads spin briefly where the machine
is idle when the process starts and makes them wait passively where other processes are running (spinning threads
made 2 threads several times slower than 1 on shared cores), and keeps freed memory for reuse
(``keep_freed_memory``).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

THREADS_ENV = "ORTHOGUARD_THREADS"
MALLOC_ENV = "ORTHOGUARD_MALLOC"  # "default": leave the C allocator's settings as they are
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    avx2: bool = False
    avx512f: bool = False
    avx512_bf16: bool = False
    amx_bf16: bool = False
    model_name: str = ""
    source: str = "unknown"  # "/proc/cpuinfo", or why the flags are unknown

    @property
    def native_bf16(self) -> bool:
        return self.avx512_bf16 or self.amx_bf16

    def describe(self) -> str:
        flags = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if getattr(self, name)]
        return f"{self.model_name or platform.machine()}: {' '.join(flags) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}"


def parse_cpuinfo(text: str) -> CpuFeatures:
    """Features from the text of ``/proc/cpuinfo`` (the first processor's ``flags`` line; x86 only has them)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return CpuFeatures(
        avx2="avx2" in flags, avx512f="avx512f" in flags, avx512_bf16="avx512_bf16" in flags,
        amx_bf16="amx_bf16" in flags, model_name=model, source="/proc/cpuinfo" if flags else "no flags in cpuinfo",
    )


_cached: CpuFeatures | None = None


def cpu_features(cpuinfo: Path = CPUINFO) -> CpuFeatures:
    """The CPU's features; all false where they cannot be read (not Linux, no /proc)."""
    global _cached
    if cpuinfo == CPUINFO and _cached is not None:
        return _cached
    try:
        features = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError as exc:
        features = CpuFeatures(model_name=platform.processor(), source=f"unreadable ({platform.system()}: {exc.strerror})")
    if cpuinfo == CPUINFO:
        _cached = features
    return features


def prefers_bf16(features: CpuFeatures | None = None) -> bool:
    """True only where the CPU computes bf16 natively (AVX-512 BF16 or AMX BF16)."""
    return (features or cpu_features()).native_bf16


def physical_cores(cpuinfo_text: str | None, allowed: set[int]) -> int:
    """How many physical cores the CPUs in ``allowed`` belong to (SMT siblings count once).

    Uses the ``processor`` / ``physical id`` / ``core id`` fields of cpuinfo; where they are missing every allowed
    CPU counts as a core."""
    if not allowed:
        return 1
    if not cpuinfo_text:
        return len(allowed)
    cores: set[tuple[str, str]] = set()
    described: set[int] = set()
    processor = physical = core = None

    def flush() -> None:
        if processor is not None and processor in allowed and core is not None:
            cores.add((physical or "0", core))
            described.add(processor)

    for line in cpuinfo_text.splitlines() + [""]:
        if not line.strip():
            flush()
            processor = physical = core = None
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor" and value.isdigit():
            processor = int(value)
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
    # CPUs in `allowed` that cpuinfo does not describe (or without core ids) count as their own cores
    return len(cores) + len(allowed - described)


def allowed_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def default_threads(env: dict[str, str] | None = None, cpuinfo_text: str | None = None,
                    allowed: set[int] | None = None) -> int:
    """``ORTHOGUARD_THREADS`` if set to a positive integer, else the physical cores this process may use."""
    env = os.environ if env is None else env
    value = env.get(THREADS_ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n > 0:
            return n
        log.warning("%s=%r is not a positive integer; using the physical core count", THREADS_ENV, value)
    if cpuinfo_text is None:
        try:
            cpuinfo_text = CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo_text = ""
    return max(1, physical_cores(cpuinfo_text, allowed_cpus() if allowed is None else allowed))


SPIN_COUNT = 30_000  # GNU OpenMP spin iterations before an idle thread sleeps (its default is 300,000)
PROC_STAT = Path("/proc/stat")


def other_runnable_tasks(proc_stat: Path = PROC_STAT, samples: int = 5, interval_s: float = 0.02) -> float | None:
    """Tasks other than this one that are running or ready to run, averaged over a few samples of ``procs_running``
    (an instant count, unlike the load average, which still shows a ``pip install`` that ended a minute ago);
    ``None`` where ``/proc/stat`` cannot be read."""
    import time

    counts = []
    for i in range(samples):
        try:
            lines = proc_stat.read_text().splitlines()
        except OSError:
            return None
        running = [int(line.split()[1]) for line in lines if line.startswith("procs_running ")]
        if not running:
            return None
        counts.append(max(0, running[0] - 1))  # the reader itself is running
        if i + 1 < samples:
            time.sleep(interval_s)
    return sum(counts) / len(counts)


def openmp_wait() -> str:
    """How idle OpenMP threads of this process wait, as the environment says (for logs and benchmarks)."""
    return ", ".join(f"{var}={os.environ[var]}" for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
                     if var in os.environ) or "OpenMP's default"


def prepare_environment(proc_stat: Path = PROC_STAT) -> bool:
    """Choose how idle OpenMP threads wait and keep freed memory for reuse; call it before ``torch`` is imported.

    OpenMP's default lets an idle thread spin for 300,000 iterations before it sleeps. On 2 idle cores that is
    fastest, but when another process wants a core, a spinning thread holds it: one decode step of SmolLM2-135M took
    4.5x as long with 2 threads as with 1, and generating 64 replies 6.7x as long as with passive waiting (a 2-core
    Xeon with one busy competing process). Passive waiting costs where the machine is idle (there generation took
    1.5x as long as with spinning, and a training step 1.1x). So, where nothing else is running when the process
    starts (``other_runnable_tasks() < 0.5``), threads spin a bounded ``SPIN_COUNT`` iterations (as fast as the
    default on the idle machine; up to 2.9x the passive time for generation if a competitor appears later), and
    otherwise wait passively (``OMP_WAIT_POLICY=PASSIVE``). ``GOMP_SPINCOUNT`` is GNU OpenMP's variable (torch's
    Linux wheels); ``KMP_BLOCKTIME=1`` (milliseconds) is the same bound for LLVM and Intel OpenMP (not measured
    here). If the user set any of ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``, nothing is changed.
    OpenMP reads these when torch loads it, so this has an effect only before ``import torch``; returns whether it
    could. Also keeps freed memory for reuse (``keep_freed_memory``), which takes effect whenever it is called."""
    if not any(var in os.environ for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
        others = other_runnable_tasks(proc_stat)
        if others is not None and others < 0.5:
            os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
            os.environ["KMP_BLOCKTIME"] = "1"
        else:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    keep_freed_memory()
    return "torch" not in sys.modules


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next allocation instead of returning it to the system.

    By default glibc serves every block over 32 MiB (a batch's logits: 8 x 87 x 49,152 fp32 is 137 MB) with a fresh
    ``mmap`` and trims the heap when its top is free, so a training step that allocates and frees the same large
    tensors again and again page-faults and zeroes them every time: 2,151 minor page faults per step of batch
    4 x 417 of SmolLM2-135M against 2-3 with blocks kept, and training about 1.2x as fast with them kept (a 2-core
    Xeon with AMX, bf16 autocast). This sets ``M_MMAP_MAX`` to 0 (large blocks come from the heap) and
    ``M_TRIM_THRESHOLD`` to 2 GiB (the heap is trimmed only when that much of its top is free). The price is
    memory: what the process frees stays its own, and the heap fragments, so peak RSS was about 1.4x as high
    (6 GB against 4.5). ``ORTHOGUARD_MALLOC=default`` leaves the allocator as it is. Returns whether the settings were applied (false there, and where the C library is not
    glibc)."""
    import ctypes

    if os.environ.get(MALLOC_ENV, "").lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default: ``default_threads()``) and inter-op threads to 1.

    Also exports ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` (for child processes, e.g. data workers) where they are
    not set. Returns the intra-op thread count. Safe to call more than once: torch allows setting inter-op threads
    only before the first parallel work, and a later call leaves that setting as it is."""
    import torch

    if n is not None and n < 1:
        raise ValueError(f"threads must be a positive integer, not {n}")
    threads = n if n is not None else default_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran
        pass
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    return threads
