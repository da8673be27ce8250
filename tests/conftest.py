"""Test helpers and fixtures; the float64 references are in ``reference.py``."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


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
