"""Doctest namespace: the names the package's docstring examples use."""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(tf=tf, np=np, keras=keras, ht=ht)
    doctest_namespace.update({name: getattr(ht, name) for name in ht.__all__})


# harmonic_tf/hub.py needs the optional keras-hub extra; without it there is nothing to doctest.
collect_ignore = (
    []
    if importlib.util.find_spec("keras_hub")
    else ["harmonic_tf/hub.py", "harmonic_tf/keras/hub.py"]
)
