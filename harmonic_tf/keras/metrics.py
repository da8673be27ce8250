"""Accuracy and perplexity of harmonic models.

On any model they read the output (logits, or probabilities with ``from_logits=False``). On a
:class:`~harmonic_tf.HarmonicModel` compiled with a :class:`~harmonic_tf.HarmonicLoss`, the
model updates them from hidden states instead, without ``[tokens, V]`` logits: in ``evaluate``
from the exact chunked loss and the nearest center; in training only what the step computes
exactly (perplexity under the exact loss); what it does not compute is not shown.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from harmonic_tf.keras.losses import labels_from_keras
from harmonic_tf.ops import LossTerms, label_weights, loss_from_logits, nearest_centers


@dataclasses.dataclass
class HarmonicStep:
    """What one step of a :class:`~harmonic_tf.HarmonicModel` hands its harmonic metrics:
    the loss terms, the hidden states and the head's centers (no ``[tokens, V]`` logits)."""

    terms: LossTerms
    hidden: tf.Tensor  # [..., D]
    labels: tf.Tensor  # [...] int32
    sample_weight: tf.Tensor | None
    training: bool
    centers: tf.Tensor  # [V, D]
    chunk_size: int
    _nearest: tf.Tensor | None = None

    def nearest(self) -> tf.Tensor:
        """Each token's nearest center (the harmonic argmax), chunked; computed once."""
        if self._nearest is None:
            flat = tf.reshape(tf.cast(self.hidden, tf.float32), [-1, self.hidden.shape[-1]])
            centers = tf.cast(self.centers, tf.float32)
            ids = nearest_centers(flat, centers, self.chunk_size)
            self._nearest = tf.reshape(ids, tf.shape(self.labels))
        return self._nearest


class HarmonicMetric(keras.metrics.Metric):
    """Base of the harmonic metrics: a weighted mean over non-ignored tokens, updated from a
    model's output (:meth:`update_state`) or from a harmonic model's step
    (:meth:`update_from_step`)."""

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

    def update_from_step(self, step: HarmonicStep, weighted: bool) -> bool:
        """Updates from a harmonic model's step (``weighted``: listed in
        ``weighted_metrics``); returns False, updating nothing, when the step does not give
        this metric's value exactly (the model then leaves it out of the logs)."""
        raise NotImplementedError

    def accumulate(self, values: tf.Tensor, labels: tf.Tensor, sample_weight=None) -> None:
        """Adds per-token ``values`` (the labels' shape), weighted by ``sample_weight``,
        skipping tokens labelled ``ignore_index``."""
        weight = label_weights(labels, self.ignore_index, sample_weight)
        # Zero-weight tokens add nothing, even a NaN value.
        self.total.assign_add(tf.reduce_sum(tf.where(weight > 0, values * weight, 0.0)))
        self.count.assign_add(tf.reduce_sum(weight))

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
class HarmonicAccuracy(HarmonicMetric):
    """Top-1 accuracy over non-ignored tokens (argmax of the harmonic logits = nearest center).

    Examples:
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

    def update_from_step(self, step: HarmonicStep, weighted: bool) -> bool:
        if step.training:  # not computed in training: the sampled or chunked loss has no argmax
            return False
        hits = tf.cast(tf.equal(step.nearest(), step.labels), tf.float32)
        self.accumulate(hits, step.labels, step.sample_weight if weighted else None)
        return True

    def result(self):
        # 0 when no token counts (all ignored or weighted 0), as Keras's own accuracy shows.
        return self.total / tf.maximum(self.count, 1.0)


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicPerplexity(HarmonicMetric):
    """``exp`` of the exact full-vocabulary harmonic loss per non-ignored token.

    Examples:
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
        return loss_from_logits(logits, labels, self.ignore_index)

    def update_from_step(self, step: HarmonicStep, weighted: bool) -> bool:
        weight = step.sample_weight if weighted else None
        terms = step.terms
        if terms.token_losses is not None:
            self.accumulate(terms.token_losses, step.labels, weight)
        elif terms.exact and weight is step.sample_weight:  # the total has this weighting
            self.total.assign_add(tf.cast(terms.total, tf.float32))
            self.count.assign_add(terms.weight_sum)
        else:
            return False
        return True

    def result(self):
        mean = self.total / tf.maximum(self.count, 1.0)
        return tf.where(self.count > 0, tf.exp(mean), float("nan"))
