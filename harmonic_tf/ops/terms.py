"""``loss_terms``: the one call a training framework makes into the math.

Hidden states, centers, labels and weights in; the weighted sum of the per-token losses, the
token counts a reduction divides by and, for evaluation, the exact per-token losses out. The
Keras half (:mod:`harmonic_tf.keras`) calls nothing else of the loss math.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from harmonic_tf.ops import inputs
from harmonic_tf.ops.exact import DENSE_MAX_BYTES, harmonic_loss
from harmonic_tf.ops.options import SampledOptions
from harmonic_tf.ops.sampled import sampled_harmonic_loss


class LossTerms(NamedTuple):
    """What a reduction and the metrics need from one batch.

    ``total``: ``sum(weight * loss)`` over the tokens; ``num_tokens``: the count of non-ignored
    tokens (what ``"mean"`` divides by); ``weight_sum``: their weights' sum; ``token_losses``:
    exact per-token losses in the labels' shape (``per_token=True`` only, else ``None``);
    ``exact``: whether ``total`` is the exact loss (not a sampled estimate)."""

    total: tf.Tensor
    num_tokens: tf.Tensor
    weight_sum: tf.Tensor
    token_losses: tf.Tensor | None
    exact: bool


def loss_terms(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    labels: tf.Tensor,
    *,
    eta: float | tf.Tensor | None = None,
    eps: float = 1e-9,
    distance: str = "euclidean",
    ignore_index: int | None = -100,
    weights: tf.Tensor | None = None,
    sampled: SampledOptions | None = None,
    seed: int | tf.Tensor | None = None,
    chunk_size: int | None = None,
    dense_max_bytes: int = DENSE_MAX_BYTES,
    path: str = "auto",
    per_token: bool = False,
) -> LossTerms:
    """The loss of one batch as :class:`LossTerms`.

    Args:
      hidden_states, class_centers, labels, eta, eps, distance, ignore_index, weights: as in
        :func:`~harmonic_tf.harmonic_loss`.
      sampled: ``None`` for the exact loss, else the sampled estimator (``seed`` as in
        :func:`~harmonic_tf.sampled_harmonic_loss`); ignored with ``per_token``.
      chunk_size, dense_max_bytes, path: the exact loss's vocabulary chunk, ``"auto"`` budget
        and path (:class:`~harmonic_tf.ExactOptions`).
      per_token: the exact per-token losses too (evaluation: no gradient is taken).

    Examples:
      >>> x = tf.random.stateless_normal([6, 4], seed=[0, 1])
      >>> w = tf.random.stateless_normal([10, 4], seed=[0, 2])
      >>> terms = loss_terms(x, w, tf.constant([1, 2, 3, -100, 5, 6]), eta=8.0)
      >>> mean = harmonic_loss(x, w, tf.constant([1, 2, 3, -100, 5, 6]), eta=8.0)
      >>> print(int(terms.num_tokens), bool(abs(terms.total / terms.num_tokens - mean) < 1e-5))
      5 True
    """
    common = dict(eta=eta, eps=eps, ignore_index=ignore_index, distance=distance)
    if per_token:
        losses = harmonic_loss(
            hidden_states, class_centers, labels, reduction="none", chunk_size=chunk_size,
            path="two_pass", **common,
        )  # fmt: skip
        total = tf.reduce_sum(_weighted(losses, weights))
    elif sampled is not None:
        total = sampled_harmonic_loss(
            hidden_states, class_centers, labels, sampled, reduction="sum", weights=weights,
            seed=seed, **common,
        )  # fmt: skip
    else:
        total = harmonic_loss(
            hidden_states, class_centers, labels, reduction="sum", weights=weights,
            chunk_size=chunk_size, dense_max_bytes=dense_max_bytes, path=path, **common,
        )  # fmt: skip
    keep = tf.cast(tf.logical_not(inputs.ignored_mask(labels, ignore_index)), tf.float32)
    return LossTerms(
        total=total,
        num_tokens=tf.reduce_sum(keep),
        weight_sum=tf.reduce_sum(label_weights(labels, ignore_index, weights)),
        token_losses=losses if per_token else None,
        exact=per_token or sampled is None,
    )


def label_weights(labels: tf.Tensor, ignore_index: int | None, weights=None) -> tf.Tensor:
    """Each token's weight in the labels' shape: 0 where ``labels == ignore_index``, else its
    weight from ``weights`` (per token, or per sequence: ``[B]`` / ``[B, 1]``; default 1).

    Examples:
      >>> print(label_weights(tf.constant([[1, -100], [2, 3]]), -100, [2.0, 0.5]).numpy())
      [[2.  0. ]
       [0.5 0.5]]
    """
    keep = tf.logical_not(inputs.ignored_mask(tf.convert_to_tensor(labels), ignore_index))
    return _weighted(tf.cast(keep, tf.float32), weights)


def _weighted(values: tf.Tensor, weights) -> tf.Tensor:
    """``values`` (the labels' shape) times per-token or per-sequence ``weights``."""
    if weights is None:
        return values
    shape = tf.shape(values)
    return values * tf.reshape(inputs.flat_weights(weights, shape, values.shape.rank), shape)
