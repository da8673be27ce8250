"""Metrics over full harmonic logits that skip training steps where the head hands over hidden
states (a bound :class:`HarmonicLoss`): they report ``evaluate``/validation numbers only and are
NaN until they have seen data, never a number computed from hidden states."""

from __future__ import annotations

import keras
import tensorflow as tf

from harmonic_tf import _inputs, _trace
from harmonic_tf.losses import exact_loss_from_logits, labels_from_keras, weighted


class _HarmonicMetric(keras.metrics.Metric):
    def __init__(self, name: str, ignore_index: int | None = -100, head: str | None = None, **kw):
        super().__init__(name=name, **kw)
        self.ignore_index = ignore_index
        self.head = head
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        head_name = getattr(self.head, "name", self.head)
        _, kind = _trace.lookup(head_name)
        if kind == "hidden_states":
            return  # a training step of a bound loss: no logits exist here
        labels = labels_from_keras(y_true, y_pred.shape.rank)
        logits = tf.cast(y_pred, tf.float32)
        if kind == "probabilities":
            logits = tf.math.log(tf.maximum(logits, 1e-38))
        values, ignored = self._values(labels, logits)
        weight = weighted(tf.cast(tf.logical_not(ignored), tf.float32), sample_weight)
        self.total.assign_add(tf.reduce_sum(values * weight))
        self.count.assign_add(tf.reduce_sum(weight))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        head = getattr(self.head, "name", self.head)
        return {"name": self.name, "ignore_index": self.ignore_index, "head": head}


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicAccuracy(_HarmonicMetric):
    """Top-1 accuracy over non-ignored tokens (argmax of the harmonic logits = nearest center)."""

    def __init__(self, name: str = "accuracy", ignore_index: int | None = -100, head=None, **kw):
        super().__init__(name=name, ignore_index=ignore_index, head=head, **kw)

    def _values(self, labels, logits):
        ignored = _inputs.ignored_mask(labels, self.ignore_index)
        hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        return tf.cast(hit, tf.float32), ignored

    def result(self):
        return tf.where(self.count > 0, self.total / tf.maximum(self.count, 1.0), float("nan"))


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicPerplexity(_HarmonicMetric):
    """``exp`` of the exact full-vocabulary harmonic loss per non-ignored token."""

    def __init__(self, name: str = "perplexity", ignore_index: int | None = -100, head=None, **kw):
        super().__init__(name=name, ignore_index=ignore_index, head=head, **kw)

    def _values(self, labels, logits):
        return exact_loss_from_logits(logits, labels, self.ignore_index)

    def result(self):
        mean = self.total / tf.maximum(self.count, 1.0)
        return tf.where(self.count > 0, tf.exp(mean), float("nan"))
