"""Smoke tests of the benchmark scripts (docs/performance.md): they run and print tables."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_overhead_prints_ratios():
    out = run(
        "bench_overhead.py",
        *("--cases", "synthetic-600-5", "--repeats", "2", "--epochs", "3", "--device", "cpu"),
    )
    row = next(line for line in out.splitlines()[::-1] if line.startswith("| synthetic-600-5"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # case, N, q, epochs, torch s, random s, d2ace s, d2ace/random, paired range, ...
    assert cells[:4] == ["synthetic-600-5", "600", "5", "3"]
    assert all(float(cell) > 0 for cell in cells[4:8])
    assert re.fullmatch(r"\d+\.\d\d–\d+\.\d\d", cells[8])
    assert "peak resident memory" in out


def test_bench_overhead_runs_with_the_libraries_default_threads():
    out = run(
        "bench_overhead.py",
        *("--cases", "synthetic-400-4", "--repeats", "1", "--epochs", "3", "--threads", "default"),
    )
    assert any(line.startswith("| synthetic-400-4") for line in out.splitlines())


def test_bench_selection_prints_stages_and_bytes():
    out = run("bench_selection.py", "--sizes", "500x4", "1000x4", "--repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith("| 1000 | 4 |")]
    assert rows, out
    cells = [float(cell) for cell in rows[-1].strip("|").split("|")]
    assert all(value > 0 for value in cells[2:9])  # every stage took some time
    assert 20 <= cells[-1] <= 32  # recorded state per (instance, label)
    assert "slope vs N" in out


def test_bench_neighbors_prints_host_and_device_times():
    out = run(
        "bench_neighbors.py",
        "--sizes",
        "400x50:binary",
        "600x8",
        "--repeats",
        "1",
        "--device",
        "cpu",
    )
    assert "device = cpu" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 400 |", "| 600 |"))]
    cells = [cell.strip() for cell in rows[-1].strip("|").split("|")]
    assert cells[:3] == ["600", "8", "normal"]
    assert all(float(cell) > 0 for cell in cells[3:6])  # host s, device s, host/device


def test_gpu_check_script_is_valid_bash_and_names_existing_files():
    script = BENCHMARKS / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for name in re.findall(r"\$here/([\w./]+\.py)", text):
        assert (BENCHMARKS / name).resolve().exists(), name
    assert "bench_overhead.py" in text and "test_device_selection.py" in text
