"""The math: squared distances and harmonic logits ``z_i = -(eta/2) * log(||x - w_i||^2 + eps)``."""

from __future__ import annotations

import tensorflow as tf

from harmonic_tf import _inputs


def expanded_sq_distances(
    x: tf.Tensor, w: tf.Tensor, x_sq: tf.Tensor | None = None, w_sq: tf.Tensor | None = None
) -> tf.Tensor:
    """``[N, D] x [M, D] -> [N, M]`` via ``|x|^2 - 2 x.w + |w|^2`` (one matmul), clamped at 0.

    Cancellation can make the expansion slightly negative when ``x`` is near ``w``; the clamp keeps
    ``log(d2 + eps)`` finite. Use :func:`true_sq_distances` where the distance must be exact.
    """
    if x_sq is None:
        x_sq = tf.reduce_sum(tf.square(x), axis=-1)
    if w_sq is None:
        w_sq = tf.reduce_sum(tf.square(w), axis=-1)
    cross = tf.matmul(x, w, transpose_b=True)
    return tf.maximum(x_sq[:, None] - 2.0 * cross + w_sq[None, :], 0.0)


def true_sq_distances(x: tf.Tensor, w: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact ``||x_n - w_{y_n}||^2`` from the explicit difference; returns ``(d2 [N], diff [N, D])``."""
    diff = x - tf.gather(w, labels)
    return tf.reduce_sum(tf.square(diff), axis=-1), diff


def logits_from_sq(d2: tf.Tensor, eta: float, eps: float) -> tf.Tensor:
    return -0.5 * eta * tf.math.log(d2 + eps)


def harmonic_logits(
    hidden_states: tf.Tensor, class_centers: tf.Tensor, eta: float | None = None, eps: float = 1e-9
) -> tf.Tensor:
    """Harmonic logits over all classes; ``softmax`` of them is the paper's HarMax.

    Args:
      hidden_states: ``[..., D]`` float (any float dtype; math runs in float32).
      class_centers: ``[V, D]`` float, one row per class (embedding-table layout).
      eta: harmonic exponent ``n`` on the plain L2 distance; ``None`` means ``sqrt(D)``.
      eps: added to the squared distance before the log; must be > 0.

    Returns:
      ``[..., V]`` float32 logits ``-(eta/2) * log(||x - w_i||^2 + eps)``.

    Example:
    >>> x = tf.constant([[0.0, 0.0]]); w = tf.constant([[1.0, 0.0], [3.0, 0.0]])
    >>> p = tf.nn.softmax(harmonic_logits(x, w, eta=2.0))  # d^-2 normalised: [0.9, 0.1]
    """
    x = tf.convert_to_tensor(hidden_states)
    w = tf.convert_to_tensor(class_centers)
    if not x.dtype.is_floating or not w.dtype.is_floating:
        raise TypeError(
            "`hidden_states` and `class_centers` must be float tensors, got "
            f"{x.dtype.name} and {w.dtype.name}."
        )
    if x.shape.rank is None or x.shape.rank < 1:
        raise ValueError(f"`hidden_states` must be [..., D], got shape {x.shape}.")
    if w.shape.rank != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"`class_centers` must be [V, {x.shape[-1]}], got shape {w.shape}.")
    eta = _inputs.resolve_eta(eta, int(x.shape[-1]))
    _inputs.check_positive("eps", eps)
    lead = tf.shape(x)[:-1]
    flat = tf.reshape(tf.cast(x, tf.float32), [-1, x.shape[-1]])
    z = logits_from_sq(expanded_sq_distances(flat, tf.cast(w, tf.float32)), eta, eps)
    return tf.reshape(z, tf.concat([lead, [w.shape[0]]], axis=0))
