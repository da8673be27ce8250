"""Unit rows for the cosine distance: the normalisation and its gradient, row by row.

The only custom gradient outside the kernel (``tests/test_architecture.py``): autodiff of
``v / |v|`` gives ``inf * 0`` at a zero row, and the sparse sampled path needs the same
gradient applied to gathered rows (:class:`~harmonic_tf.ops._kernel.CenterGrad`).
"""

from __future__ import annotations

import tensorflow as tf


def _inverse_norms(v: tf.Tensor) -> tf.Tensor:
    """``1 / |v|`` per row ``[..., 1]``, 0 for a zero row."""
    sq = tf.reduce_sum(tf.square(v), axis=-1, keepdims=True)
    return tf.where(sq > 0.0, tf.math.rsqrt(sq), 0.0)


def normalized_rows(v: tf.Tensor) -> tf.Tensor:
    """``v / |v|`` along the last axis, no gradient of its own; a zero row stays 0 (so it is at
    distance 1 from every unit vector: uniform probabilities, never NaN)."""
    return v * _inverse_norms(v)


def gathered_rows(w: tf.Tensor, ids: tf.Tensor, unit: bool) -> tf.Tensor:
    """The rows ``ids`` of ``w``, normalised if ``unit`` (a sparse path reading a cosine table:
    :func:`unit_rows_grad` of the same rows takes their gradients back)."""
    rows = tf.gather(w, ids)
    return normalized_rows(rows) if unit else rows


def unit_rows_grad(v: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """The gradient of ``loss(v / |v|)`` with respect to rows ``v`` given ``g`` with respect to
    the unit rows: ``(g - u (u . g)) / |v|``; 0 for a zero row. Works row by row, so it applies
    to the gathered rows of a sparse gradient as to a whole table."""
    inv = _inverse_norms(v)
    u = v * inv
    return (g - u * tf.reduce_sum(u * g, axis=-1, keepdims=True)) * inv


@tf.custom_gradient
def unit_rows(v: tf.Tensor):
    """:func:`normalized_rows` with the gradient of :func:`unit_rows_grad` (autodiff of
    ``v / |v|`` would give ``inf * 0`` at a zero row)."""

    def grad(g):
        return unit_rows_grad(v, tf.convert_to_tensor(g))

    return normalized_rows(v), grad


def measured(v: tf.Tensor, distance: str) -> tf.Tensor:
    """Float32 rows ``[..., D]`` as ``distance`` measures them: as they are (Euclidean) or on
    the unit sphere (cosine), with the gradient flowing through the normalisation."""
    return unit_rows(v) if distance == "cosine" else v
