"""`python -m benchmarks`: the generated section of RESULTS.md is replaced between its markers,
the hand-written history around it is kept, and every benchmark named exists."""
from __future__ import annotations

from pathlib import Path

from benchmarks.__main__ import BENCHMARKS, markdown, regenerate

ROOT = Path(__file__).resolve().parents[2]


def run(name: str, table: str) -> dict:
    return {"date": "2026-12-07 12:00:00 UTC", "commit": "abc1234", "only": [],
            "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 23, "python": "3.11"},
            "seconds": 60.0, "benchmarks": [{
                "name": name, "what": "w", "command": "c", "exit_code": 0, "seconds": 1.0,
                "load_before": [0.1, 0.2, 0.3], "load_after": [0.2, 0.2, 0.3],
                "output": table, "stderr_tail": ""}]}


def test_the_generated_section_is_replaced_and_the_history_kept(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nintro\n\n## Old section\n\nold numbers\n")
    regenerate(results, markdown(run("teacher", "first table")))
    regenerate(results, markdown(run("teacher", "second table")))
    text = results.read_text()
    assert text.count("bench:begin") == 1 and "second table" in text and "first table" not in text
    assert text.startswith("# Results\n\nintro") and "## Old section\n\nold numbers" in text
    assert text.index("bench:begin") < text.index("## Old section")


def test_every_benchmark_command_exists():
    for cmd, _, _ in BENCHMARKS.values():
        assert (ROOT / cmd[1]).exists(), cmd
