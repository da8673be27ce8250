"""Two worker processes on localhost under ``tf.distribute.MultiWorkerMirroredStrategy`` (CPU
collectives), training with the package's losses in a custom loop (see multi_worker_job.py)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from multi_worker_job import build, data

pytestmark = pytest.mark.slow  # still run in CI; left out of `-m "not slow"`

JOB = os.path.join(os.path.dirname(__file__), "multi_worker_job.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_workers(kind: str, out_dir) -> list[dict]:
    ports = f"{_free_port()},{_free_port()}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [
        subprocess.Popen(
            [sys.executable, JOB, ports, str(i), kind, str(out_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, err[-4000:]
    return [dict(np.load(out_dir / f"worker{i}.npz")) for i in range(2)]


def _weights(result: dict, prefix: str) -> list[np.ndarray]:
    return [result[f"{prefix}{i}"] for i in range(len([k for k in result if k.startswith(prefix)]))]


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    return _run_workers("sampled", tmp_path_factory.mktemp("sampled"))


def test_workers_stay_identical_and_the_loss_falls(sampled_run):
    a, b = sampled_run
    np.testing.assert_array_equal(a["checksums"], b["checksums"])  # step by step
    for u, v in zip(_weights(a, "final"), _weights(b, "final"), strict=True):
        np.testing.assert_array_equal(u, v)
    losses = a["losses"]
    assert len(losses) == 8 and losses[-3:].mean() < losses[:3].mean() - 0.1, losses


def test_each_worker_draws_its_own_reproducible_negatives(sampled_run):
    a, b = sampled_run
    # The same batch and weights under each replica's seed: equal twice on one worker
    # (reproducible), different across workers (their own negatives).
    assert a["own_negatives"][0] == a["own_negatives"][1]
    assert b["own_negatives"][0] == b["own_negatives"][1]
    assert a["own_negatives"][0] != b["own_negatives"][0]


def test_chief_checkpoint_restores_on_both_workers(sampled_run):
    for result in sampled_run:
        for u, v in zip(_weights(result, "final"), _weights(result, "restored"), strict=True):
            np.testing.assert_array_equal(u, v)


def test_exact_loss_matches_single_process_training_on_the_global_batch(tmp_path):
    a, b = _run_workers("exact", tmp_path)
    body, head, optimizer, variables = build()
    x, y, global_batch = data()

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = ht.harmonic_loss(body(xb), head.centers, yb, eta=head.resolved_eta())
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    losses = [
        float(step(x[i : i + global_batch], y[i : i + global_batch]))
        for i in range(0, len(x), global_batch)
    ]
    np.testing.assert_allclose(a["losses"], losses, rtol=1e-5)
    for ours, single in zip(_weights(a, "final"), variables, strict=True):
        np.testing.assert_allclose(ours, single.numpy(), rtol=1e-4, atol=1e-6)
    for u, v in zip(_weights(a, "final"), _weights(b, "final"), strict=True):
        np.testing.assert_array_equal(u, v)
