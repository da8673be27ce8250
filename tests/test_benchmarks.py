"""Smoke test of the training-step benchmark: every loss runs and lands in the table. Timings
are not checked (they are the benchmark's output, not a test)."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_bench_train_step_runs_every_loss(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "bench_train_step.py"),
        *("--vocab-size", "300", "--batch", "4", "--seq-len", "16", "--steps", "2"),
        *("--warmup", "1", "--chunk-size", "128", "--repeats", "1", "--out", str(tmp_path)),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "train_step_v300.json").read_text())["rows"]
    assert set(rows) == {"ce", "sampled", "exact_chunked"}
    assert all(r["tokens_per_s"] > 0 for r in rows.values()), rows
    table = (tmp_path / "train_step_v300.md").read_text()
    assert "exact harmonic (chunk_size=128)" in table and "failed" not in table


def test_hlo_report_reads_the_memory_plan(tmp_path):
    """XLA's buffer assignment, read back: the two-pass exact loss holds no [V, D] temporary
    (only [N, chunk] blocks) while the dense loss holds [N, V] logits."""
    n, d, v = 512, 256, 6000  # a [V, D] temporary (6 MB) would outrank the [N, 2048] blocks
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "hlo_report.py"),
        *("--paths", "harmonic_two_pass_xla", "harmonic_dense_xla", "--out", str(tmp_path)),
        *("--n", str(n), "--d", str(d), "--v", str(v), "--k", "8"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    rows = {r["name"]: r for r in json.loads((tmp_path / "hlo_report.json").read_text())}
    two_pass, dense = rows["harmonic_two_pass_xla"], rows["harmonic_dense_xla"]
    assert two_pass["output_bytes"] >= 4 * v * d  # dW is an output
    assert max(t["bytes"] for t in two_pass["largest_temp_values"]) <= 4 * n * 2048
    assert all(f"[{v}," not in t["shape"] for t in two_pass["largest_temp_values"])
    assert f"f32[{n},{v}]" in dense["largest_temp_values"][0]["shape"]
    assert two_pass["ops"]["dot"] == 4 and dense["ops"]["dot"] == 3
