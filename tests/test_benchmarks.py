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
