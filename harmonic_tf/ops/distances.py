"""The math: squared distances and harmonic logits ``z_i = -(eta/2) * log(d_i^2 + eps)``.

``distance="euclidean"``: ``d_i = ||x - w_i||``; ``"cosine"``: the same between unit vectors,
``d_i^2 = ||x/|x| - w_i/|w_i| ||^2 = 2 - 2 cos(x, w_i)``, in ``[0, 4]``. Every path measures
cosine by normalising the rows it reads (:mod:`harmonic_tf.ops.cosine`) and then runs the
Euclidean math.
"""

from __future__ import annotations

import tensorflow as tf

from harmonic_tf.ops import inputs
from harmonic_tf.ops.cosine import measured


def expanded_sq_distances(
    x: tf.Tensor, w: tf.Tensor, x_sq: tf.Tensor | None = None, w_sq: tf.Tensor | None = None
) -> tf.Tensor:
    """``[N, D]`` hidden states against centers ``[M, D]`` (shared) or ``[N, M, D]`` (per
    token) -> ``[N, M]`` squared distances via ``|x|^2 - 2 x.w + |w|^2`` (one matmul), clamped
    at 0.

    Cancellation can make the expansion slightly negative when ``x`` is near ``w``; the clamp keeps
    ``log(d2 + eps)`` finite. Where a distance must be exact, use the explicit difference.
    """
    if x_sq is None:
        x_sq = tf.reduce_sum(tf.square(x), axis=-1)
    if w_sq is None:
        w_sq = tf.reduce_sum(tf.square(w), axis=-1)
    if w.shape.rank == 3:
        cross = tf.einsum("nd,nkd->nk", x, w)
    else:
        cross, w_sq = tf.matmul(x, w, transpose_b=True), w_sq[None, :]
    return tf.maximum(x_sq[:, None] - 2.0 * cross + w_sq, 0.0)


def reference_point(x: tf.Tensor) -> tf.Tensor:
    """``[D]``: the mean of the hidden states ``x [N, D]`` (0 for no rows) on a ``2^-16`` grid,
    without gradient.

    Distances do not change when both sides move, so every path measures them from this point:
    the one-matmul expansion then keeps float32 accuracy when hidden states and centers share a
    large common offset (features after a ReLU, an un-normalised body), where from the origin
    ``|x|^2 + |w|^2`` would dwarf ``d^2``. Both sides must move by the same float32 vector: XLA
    re-fuses ``sum * (1/N)`` into each consumer, and a fused multiply-subtract then shifted the
    centers by the unrounded mean (3.5e-4 off at a 1e4 offset); ``round`` cannot be contracted."""
    count = tf.cast(tf.shape(x)[0], x.dtype)
    mean = tf.math.divide_no_nan(tf.reduce_sum(x, axis=0), count)
    return tf.stop_gradient(tf.round(mean * 65536.0) / 65536.0)


def logits_from_sq(d2: tf.Tensor, eta: float | tf.Tensor, eps: float) -> tf.Tensor:
    return -0.5 * eta * tf.math.log(d2 + eps)


def log_distances(d2: tf.Tensor, eps: float) -> tf.Tensor:
    """``dz/deta = -(1/2) log(d2 + eps)``: what a learned exponent's gradient is made of."""
    return -0.5 * tf.math.log(d2 + eps)


def harmonic_logits(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    eta: float | tf.Tensor | None = None,
    eps: float = 1e-9,
    distance: str = "euclidean",
) -> tf.Tensor:
    """Harmonic logits over all classes; ``softmax`` of them is the paper's HarMax.

    Args:
      hidden_states: ``[..., D]`` float (any float dtype; math runs in float32).
      class_centers: ``[V, D]`` float, one row per class (embedding-table layout).
      eta: harmonic exponent ``n`` on the distance: a number, a scalar float tensor or
        variable (gradients flow to it), or ``None`` for the default rule
        (:func:`~harmonic_tf.default_eta`).
      eps: added to the squared distance before the log; must be > 0.
      distance: ``"euclidean"`` or ``"cosine"`` (between unit vectors: ``d^2 = 2 - 2 cos``).

    Returns:
      ``[..., V]`` float32 logits ``-(eta/2) * log(d_i^2 + eps)``.

    Examples:
      >>> x = tf.constant([[0.0, 0.0]])
      >>> w = tf.constant([[1.0, 0.0], [3.0, 0.0]])
      >>> p = tf.nn.softmax(harmonic_logits(x, w, eta=2.0))  # d^-2, normalised
      >>> print(np.round(p.numpy(), 3))
      [[0.9 0.1]]
      >>> z = harmonic_logits(tf.constant([[1.0, 1.0]]), w, eta=2.0, distance="cosine")
      >>> print(np.round(np.exp(-z.numpy()), 3))  # 2 - 2 cos(45 degrees) for both classes
      [[0.586 0.586]]
    """
    flat, w, lead = inputs.flat_rows(hidden_states, class_centers)
    inputs.check_distance(distance)
    eta = inputs.resolve_eta(eta, int(w.shape[-1]), distance)
    inputs.check_positive("eps", eps)
    flat, w = measured(flat, distance), measured(w, distance)
    origin = reference_point(flat)
    d2 = expanded_sq_distances(flat - origin, w - origin)
    z = logits_from_sq(d2, eta, eps)
    return tf.reshape(z, tf.concat([lead, [w.shape[0]]], axis=0))
