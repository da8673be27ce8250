"""Which harmonic heads ran in the graph being traced, and what they returned.

A Keras train step calls the model, then the loss, in one trace. The head records itself here
so the loss can (a) find the head after a ``.keras`` reload, where a layer reference cannot be
serialized, (b) know whether ``y_pred`` holds hidden states or logits, and (c) refuse a head that
the model being trained never called.
"""

from __future__ import annotations

import threading
import weakref

import tensorflow as tf

_EAGER = object()
_lock = threading.Lock()
_calls: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_eager_calls: dict = {}


def _graph_key():
    """The outermost graph being traced: a distribution strategy may call the model and the loss
    in different nested graphs of one step function."""
    if tf.executing_eagerly():
        return _EAGER
    from tensorflow.python.framework.func_graph import FuncGraph

    graph = tf.compat.v1.get_default_graph()
    # Stop at the outermost FuncGraph: above it is the global graph every function shares.
    while isinstance(getattr(graph, "outer_graph", None), FuncGraph):
        graph = graph.outer_graph
    return graph


def record(head, output_kind: str) -> None:
    key = _graph_key()
    with _lock:
        calls = _eager_calls if key is _EAGER else _calls.setdefault(key, {})
        calls[head.name] = (weakref.ref(head), output_kind)


def lookup(name: str | None):
    """``(head, output_kind)`` for the head called in the current trace (by name if given),
    or ``(None, None)``. Raises if ``name`` is None and several heads ran."""
    key = _graph_key()
    with _lock:
        calls = dict(_eager_calls if key is _EAGER else _calls.get(key, {}))
    live = {n: (ref(), kind) for n, (ref, kind) in calls.items() if ref() is not None}
    if name is not None:
        return live.get(name, (None, None))
    if len(live) > 1:
        raise ValueError(
            f"Several harmonic heads ran in this step ({sorted(live)}); pass `head=` (the layer or "
            "its name) to the HarmonicLoss or metric."
        )
    return next(iter(live.values()), (None, None))
