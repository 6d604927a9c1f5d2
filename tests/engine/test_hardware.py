"""`auto` dtypes: bf16 only where the CPU computes it natively (common/hardware.py)."""
from __future__ import annotations

import pytest

from common import hardware
from engine.config import StudentConfig, TeacherConfig

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512bw avx512_bf16\n"


def test_flags_are_read_from_cpuinfo():
    assert "avx2" in hardware.cpu_flags(AVX2_ONLY)
    assert "avx512_bf16" not in hardware.cpu_flags(AVX2_ONLY)
    assert {"avx512_bf16", "amx_bf16"} <= hardware.cpu_flags(SAPPHIRE)
    assert hardware.cpu_flags("") == set()


@pytest.mark.parametrize("cpuinfo, want", [(AVX2_ONLY, "float32"), (SAPPHIRE, "bfloat16"),
                                           (ZEN4, "bfloat16")])
def test_auto_resolves_by_the_cpu(monkeypatch, cpuinfo, want):
    monkeypatch.setattr(hardware, "cpu_bf16",
                        lambda: bool(hardware.cpu_flags(cpuinfo) & set(hardware.BF16_FLAGS)))
    assert hardware.resolve_dtype("auto") == want
    assert hardware.resolve_dtype("auto", gpu=True) == "bfloat16"     # the engine's GPU nodes
    assert hardware.resolve_dtype("float16") == "float16"             # explicit wins
    # the configs hold the resolved value, so the run records (and fingerprints) what ran
    assert StudentConfig().dtype == want
    assert StudentConfig(dtype="bfloat16").dtype == "bfloat16"
    assert TeacherConfig().server_dtype == want


def test_this_machine_agrees_with_its_flags():
    flags = hardware.cpu_flags()
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert StudentConfig().dtype == ("bfloat16" if native else "float32")
