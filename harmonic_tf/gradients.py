"""The backward math shared by the exact and the sampled loss.

Per token, with logits ``z_i = -(eta/2) log(d_i^2 + eps)`` (plus a logQ bias for sampled columns)
and ``p = softmax(z)``, the loss ``lse(z) - z_y`` has
``c_i = dL/d(d_i^2) = (p_i - [i=y]) * (-(eta/2)) / (d_i^2 + eps)``, so that
``dL/dx = 2 sum_i c_i (x - w_i)`` and ``dL/dw_i = -2 sum_n c_ni (x_n - w_i)``, and
``dL/deta = sum_i (p_i - [i=y]) l_i`` with ``l_i = -(1/2) log(d_i^2 + eps)``.
The true class (``[i=y]``) is handled on its own, from the explicit difference ``x - w_y``;
the other classes' terms go through two matmuls, so no ``[N, V, D]`` tensor exists.
"""

from __future__ import annotations

import tensorflow as tf

from harmonic_tf.distances import log_distances


def custom_gradient_with_eta(fn, x: tf.Tensor, w: tf.Tensor, eta):
    """``fn(x, w, eta) -> (loss, grad)`` with ``grad(upstream) -> (dx, dw, d_eta)``, under
    ``tf.custom_gradient``. A tensor ``eta`` (a learned exponent) is an input, so ``d_eta``
    reaches it (a tensor captured by the closure would get no gradient, silently); a number
    stays a Python constant of the traced math, and ``fn`` returns ``d_eta=None`` for it."""
    learn = isinstance(eta, tf.Tensor)

    @tf.custom_gradient
    def call(x, w, eta_in):
        return fn(x, w, eta_in if learn else eta)

    return call(x, w, eta if learn else tf.constant(0.0))


def coefficients(z, lse, g, eta, eps: float, d2=None) -> tf.Tensor:
    """``c = -(eta/2) p / (d2 + eps)`` for the other classes' ``[N, M]`` logits ``z``, times the
    per-token upstream ``g [N]``; columns at -inf (the true class, masked ones) give 0.

    Without ``d2`` the logits must be unbiased (``z = -(eta/2) log(d2 + eps)``):
    ``1 / (d2 + eps) = exp(-2 z / eta)``, so the ``[N, M]`` distances need not be kept."""
    if d2 is None:
        return -0.5 * eta * tf.exp(z * (1.0 + 2.0 / eta) - lse[:, None]) * g[:, None]
    return -0.5 * eta * tf.exp(z - lse[:, None]) / (d2 + eps) * g[:, None]


def hidden_grad(c: tf.Tensor, x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``[N, D]``: ``2 sum_i c_ni (x_n - w_i)`` for ``c [N, M]`` over the centers ``w [M, D]``."""
    return 2.0 * tf.reduce_sum(c, axis=1)[:, None] * x - 2.0 * tf.matmul(c, w)


def center_grad(c: tf.Tensor, x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``[M, D]``: ``-2 sum_n c_ni (x_n - w_i)`` for ``c [N, M]`` over the centers ``w [M, D]``."""
    return 2.0 * tf.reduce_sum(c, axis=0)[:, None] * w - 2.0 * tf.matmul(c, x, transpose_a=True)


def true_pull(margin, d2_true, diff_true, g, eta, eps: float) -> tf.Tensor:
    """True-class term of dL/dx ``[N, D]``, ``2 c_y (x - w_y)`` with ``c_y = (p_y - 1) *
    -(eta/2) / (d2_y + eps)`` and ``1 - p_y = sigmoid(margin)``, ``margin = lse_other - z_y``.
    Its center gradient is the negative."""
    c_true = tf.math.sigmoid(margin) * (0.5 * eta) / (d2_true + eps) * g
    return 2.0 * c_true[:, None] * diff_true


def expected_l(z, lse, eta=None, eps: float = 0.0, d2=None) -> tf.Tensor:
    """``[N]``: ``sum_i p_i l_i`` over the finite columns of ``z``, ``p = exp(z - lse)``.
    ``l = z / eta`` for unbiased logits; pass ``d2`` when ``z`` carries a logQ bias."""
    p = tf.exp(z - lse[:, None])
    if d2 is not None:
        return tf.reduce_sum(p * log_distances(d2, eps), axis=1)
    return tf.reduce_sum(tf.where(p > 0.0, p * z, 0.0), axis=1) / eta


def true_eta_term(margin, d2_true, g, eps: float) -> tf.Tensor:
    """``sum_n g_n (1 - p_y) l_y``: what ``dL/deta`` subtracts for the true class; 0 where ``g``
    is 0."""
    term = g * tf.math.sigmoid(margin) * log_distances(d2_true, eps)
    return tf.reduce_sum(tf.where(g == 0.0, 0.0, term))


def eta_gradient(other_l, margin, d2_true, g, eps: float) -> tf.Tensor:
    """``sum_n g_n dL_n/deta`` from ``other_l [N]``, the other classes' ``sum_i p_i l_i``
    (:func:`expected_l`, summed over chunks or candidate blocks)."""
    return tf.reduce_sum(g * other_l) - true_eta_term(margin, d2_true, g, eps)
