"""Facts about the machine this process runs on: which host, which CPU, how many cores to use, how its
allocator and PyTorch's thread pool are set for a fair benchmark.

One reader of ``/proc/cpuinfo`` (read once per process) serves the thread count, the CPU's name and its
VNNI flag. Nothing here imports torch or a GPU library at module level.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from kinship.manifests import StageHost


def code_commit(folder: Path | None = None) -> str:
    """The git commit of the code in ``folder`` (this package's checkout by default): the hash, with ``-dirty`` when
    tracked files were changed (the commit then does not say what ran), or ``unknown`` outside a git checkout."""
    folder = folder or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
        # the changes themselves, digested: the same uncommitted code twice is the same code ("nothing new"), a
        # different edit is not
        diff = git("diff", "HEAD") if changed else ""
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty-{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if changed else commit


def stage_host(role: str | None = None) -> StageHost:
    """Which machine did a stage: host name and its role (the pool it serves). Not ``tensorrt_backend.HostFacts``
    (what a host offers TensorRT)."""
    return {"hostname": socket.gethostname(), "role": role or os.environ.get("KINSHIP_HOST_ROLE", "local")}


@lru_cache(maxsize=1)
def cpuinfo() -> str | None:
    """The text of ``/proc/cpuinfo``, or None where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    for line in (cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512_VNNI or AVX_VNNI): then full-range U8S8 is safe and faster."""
    flags = cpuinfo() or ""
    return "avx512_vnni" in flags or "avx_vnni" in flags


def default_threads() -> int:
    """ONNX Runtime's default intra-op thread count: the physical cores (hyper-threads not counted).

    Read from /proc/cpuinfo (cores this process may run on); elsewhere, every logical CPU.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    text = cpuinfo()
    if text is None:
        return len(allowed)
    cores = set()
    for block in text.strip().split("\n\n"):
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}
        if info.get("processor", "").isdigit() and int(info["processor"]) in allowed:
            cores.add((info.get("physical id", "0"), info.get("core id", info["processor"])))
    return len(cores) or len(allowed)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``threads`` (None or 0: unchanged), restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel at once.

    PyTorch eager allocates every activation afresh. At batch 64 the large ones cross glibc's mmap
    threshold, so each call maps new pages and faults them in, and PyTorch's speed then depends on the
    allocator's history in the process: 1,900 to 2,600 pairs/s in a fresh process against 3,600 to
    4,100 with this setting (demo model, 2 threads). ONNX Runtime keeps its own arena and is not
    affected. A long-running server, or PyTorch with jemalloc or tcmalloc, behaves like this setting,
    so benchmarks give it to PyTorch: the comparison is against PyTorch at its steady best. It stays
    set for the rest of the process (memory is kept, not leaked). False where there is no glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # 32 MiB is the largest mmap threshold glibc accepts on 64-bit; the trim threshold keeps 1 GiB.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
