"""Accuracy and perplexity of harmonic models.

On any model they read the output (logits, or probabilities with ``from_logits=False``). On a
:class:`~harmonic_tf.HarmonicModel` compiled with a :class:`~harmonic_tf.HarmonicLoss`, the
model updates them from hidden states instead, without ``[tokens, V]`` logits: in ``evaluate``
from the exact chunked loss and the nearest center; in training only what the step computes
exactly (perplexity under the exact loss); what it does not compute is not shown.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from harmonic_tf import _inputs
from harmonic_tf.losses import labels_from_keras, weighted


def exact_loss_from_logits(logits: tf.Tensor, labels: tf.Tensor, ignore_index) -> tf.Tensor:
    """Per-token ``logsumexp(z) - z_y`` from full logits, 0 where ignored, NaN where invalid."""
    logits = tf.cast(logits, tf.float32)
    ignored = _inputs.ignored_mask(labels, ignore_index)
    safe = tf.where(ignored, tf.zeros_like(labels), labels)
    vocab = tf.shape(logits)[-1]
    invalid = tf.logical_and(tf.logical_not(ignored), tf.logical_or(safe < 0, safe >= vocab))
    if not _inputs.inside_xla():
        tf.debugging.assert_equal(
            tf.reduce_any(invalid), False, message=f"`labels` must be in [0, V) or {ignore_index}"
        )
    clipped = tf.clip_by_value(safe, 0, vocab - 1)
    true = tf.gather(logits, clipped, batch_dims=labels.shape.rank)
    # softplus(lse over the other classes - z_y): no cancellation when the loss is tiny.
    others = tf.where(
        tf.one_hot(clipped, vocab, on_value=True, off_value=False), -float("inf"), logits
    )
    losses = tf.math.softplus(tf.reduce_logsumexp(others, axis=-1) - true)
    losses = tf.where(invalid, float("nan"), losses)
    return tf.where(ignored, tf.zeros_like(losses), losses)


class _HarmonicMetric(keras.metrics.Metric):
    def __init__(self, name: str, ignore_index: int | None = -100, from_logits: bool = True, **kw):
        super().__init__(name=name, **kw)
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """From the model's output ``y_pred`` ``[..., V]`` and class ids ``y_true`` ``[...]``."""
        logits = tf.cast(y_pred, tf.float32)
        labels = labels_from_keras(y_true, logits.shape.rank)
        if not self.from_logits:
            logits = tf.math.log(tf.maximum(logits, 1e-38))
        self.accumulate(self._values(labels, logits), labels, sample_weight)

    def accumulate(self, values: tf.Tensor, labels: tf.Tensor, sample_weight=None) -> None:
        """Adds per-token ``values`` (the labels' shape), weighted by ``sample_weight``,
        skipping tokens labelled ``ignore_index``."""
        keep = tf.logical_not(_inputs.ignored_mask(labels, self.ignore_index))
        weight = weighted(tf.cast(keep, tf.float32), sample_weight)
        # Zero-weight tokens add nothing, even a NaN value.
        self.total.assign_add(tf.reduce_sum(tf.where(weight > 0, values * weight, 0.0)))
        self.count.assign_add(tf.reduce_sum(weight))

    def accumulate_total(self, total: tf.Tensor, labels: tf.Tensor, sample_weight=None) -> None:
        """Adds an already weighted ``total`` over the tokens of ``labels``."""
        keep = tf.logical_not(_inputs.ignored_mask(labels, self.ignore_index))
        self.total.assign_add(tf.cast(total, tf.float32))
        self.count.assign_add(tf.reduce_sum(weighted(tf.cast(keep, tf.float32), sample_weight)))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {
            "name": self.name,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicAccuracy(_HarmonicMetric):
    """Top-1 accuracy over non-ignored tokens (argmax of the harmonic logits = nearest center).

    Example:
    >>> metric = HarmonicAccuracy()
    >>> metric.update_state([1, 0, -100], [[0.1, 0.9], [0.2, 0.8], [0.5, 0.5]])
    >>> print(float(metric.result()))
    0.5
    """

    def __init__(
        self,
        name: str = "accuracy",
        ignore_index: int | None = -100,
        from_logits: bool = True,
        **kw,
    ):
        super().__init__(name=name, ignore_index=ignore_index, from_logits=from_logits, **kw)

    def _values(self, labels, logits):
        nearest = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.cast(tf.equal(nearest, labels), tf.float32)

    def result(self):
        return tf.where(self.count > 0, self.total / tf.maximum(self.count, 1.0), float("nan"))


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicPerplexity(_HarmonicMetric):
    """``exp`` of the exact full-vocabulary harmonic loss per non-ignored token.

    Example:
    >>> metric = HarmonicPerplexity()
    >>> metric.update_state([1, 1], [[0.0, 0.0], [0.0, 0.0]])  # uniform over 2 classes
    >>> print(round(float(metric.result()), 4))
    2.0
    """

    def __init__(
        self,
        name: str = "perplexity",
        ignore_index: int | None = -100,
        from_logits: bool = True,
        **kw,
    ):
        super().__init__(name=name, ignore_index=ignore_index, from_logits=from_logits, **kw)

    def _values(self, labels, logits):
        return exact_loss_from_logits(logits, labels, self.ignore_index)

    def result(self):
        mean = self.total / tf.maximum(self.count, 1.0)
        return tf.where(self.count > 0, tf.exp(mean), float("nan"))
