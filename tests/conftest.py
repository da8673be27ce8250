"""Test helpers and fixtures; the float64 references are in ``reference.py``."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402

# The plain sampled formula of `sampled_reference`: the given candidates only, uniform logQ, the
# candidates' own centers gradient (the package defaults add in-batch ids and center rows).
PLAIN = ht.SampledOptions(sampler="uniform", in_batch_negatives=0, center_gradient="indexed_slices")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def f32_buffer_sizes(hlo: str) -> set[int]:
    """The element counts of every float32 shape in an HLO text (how the HLO tests look for a
    ``[N, V]`` buffer)."""
    import re

    shapes = re.findall(r"f32\[([\d,]+)\]", hlo)
    return {int(np.prod([int(s) for s in shape.split(",") if s])) for shape in shapes}


def maybe_jit(fn, mode: str):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def fresh_keras_state():
    """Frees Keras's state (and the compiled programs) after the test: each keras-hub model
    compiles its own, and the suite's memory would grow with every one."""
    yield
    import keras

    keras.backend.clear_session(free_memory=True)


def shared_data_path(name: str) -> str:
    path = os.path.abspath(os.path.join(SHARED_DATA, name))
    if not os.path.exists(path):
        pytest.skip(f"shared data {name!r} not found at {path} (CI always has ../shared/data)")
    return path


# Modules whose every test is a whole workflow (Keras training loops, resumption, property
# searches): CI runs them; the day-to-day subset (`-m "not slow"`) leaves them out.
SLOW_MODULES = {"test_keras.py", "test_reliability.py"}


def pytest_collection_modifyitems(config, items):
    """The day-to-day subset checks each case eagerly: graph-mode and XLA parametrizations
    (``mode``), and the workflow modules above, are marked ``slow`` (CI runs them all)."""
    for item in items:
        mode = getattr(getattr(item, "callspec", None), "params", {}).get("mode")
        if mode in ("graph", "xla") or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# Set in the child process of an `own_process` test (below).
IN_CHILD = "HARMONIC_TF_TEST_CHILD"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "own_process: the test body runs in a pytest process of its own (keras-hub models)",
    )


def pytest_pyfunc_call(pyfuncitem):
    """Runs an ``own_process`` test in a child pytest process. XLA keeps every compiled
    program mapped until its process ends (``clear_session`` frees none of them): about 1,000
    memory mappings and 300 MB per keras-hub family test, so in one process the suite passed
    Linux's default ``vm.max_map_count`` (65,530), where the JIT segfaults, and 15 GB of memory.
    The child's exit frees them. Its output is shown when it fails."""
    if pyfuncitem.get_closest_marker("own_process") is None or os.environ.get(IN_CHILD):
        return None
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid]
    root = str(pyfuncitem.config.rootpath)
    env = dict(os.environ, **{IN_CHILD: "1"})
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
    if out.returncode == 5:  # the child collected nothing: the node id did not resolve
        pytest.fail(f"{pyfuncitem.nodeid}: its own process ran no test\n{out.stdout[-2000:]}")
    if out.returncode != 0:
        pytest.fail(f"{pyfuncitem.nodeid} failed in its own process:\n{out.stdout[-6000:]}")
    if " skipped" in out.stdout.splitlines()[-1] and " passed" not in out.stdout.splitlines()[-1]:
        pytest.skip(f"skipped in its own process: {out.stdout.splitlines()[-1]}")
    return True
