"""Which floating-point format this machine computes fast in: `auto` dtypes resolve here.

bf16 is only fast on a CPU with native bf16 instructions (AVX-512 BF16 or AMX). Without them
PyTorch and vLLM emulate it, and it is the slowest choice there is. Measured on a 2-core AMD EPYC
with AVX2 only (no AVX-512), 2026-12-07:

| | bf16 | fp32 |
|---|---:|---:|
| torch matmul 2048 x 2048, GFLOPS | 0.3 | 127 |
| vLLM-CPU, 0.5B student, 16 HumanEval prompts greedy x 64 tokens, tokens/s | 5.4 | 28.5 |

while on a machine with AMX a bf16 matmul ran at 1,400-1,700 GFLOPS. So `auto` means bf16 on a
GPU that supports it and on a CPU with native bf16, fp32 everywhere else.
"""
from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # /proc/cpuinfo flags of native bf16 arithmetic


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags (of the first processor) in /proc/cpuinfo, or in `cpuinfo`."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):   # x86, ARM
            return set(value.split())
    return set()


@functools.cache
def cpu_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX; ARM: the bf16 feature)."""
    flags = cpu_flags()
    return any(f in flags for f in BF16_FLAGS) or "bf16" in flags


def has_gpu() -> bool:
    """An NVIDIA GPU on this machine (without importing torch: config loading stays light)."""
    return Path("/dev/nvidia0").exists()


def resolve_dtype(dtype: str, gpu: bool = False) -> str:
    """`auto` -> bfloat16 for an engine on a GPU (vLLM's choice for these models; a GPU older
    than Ampere needs float16, set explicitly) and on a CPU with native bf16, float32 on any
    other CPU; any other value is returned as given. Resolved where the config is made (the
    driver), so the run records, and fingerprints, the dtype its engines use."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if gpu or cpu_bf16() else "float32"
