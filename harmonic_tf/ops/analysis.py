"""Reading a trained harmonic model: nearest centers, distance as confidence, and the geometry
of a center or embedding matrix. Chunked over the classes: never an ``[N, V]`` tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from harmonic_tf.ops import _kernel, inputs
from harmonic_tf.ops.cosine import measured
from harmonic_tf.ops.distances import expanded_sq_distances, logits_from_sq, reference_point
from harmonic_tf.ops.exact import DEFAULT_CHUNK_SIZE, num_chunks_of, vocab_chunk

# Classes whose terms harmonic_confidence takes from exact distances.
EXACT_NEAREST = 8


class Nearest(NamedTuple):
    """The ``k`` nearest centers of each hidden state: ``distances [N, k]`` (L2, ascending)
    and their class ``ids [N, k]``."""

    distances: tf.Tensor
    ids: tf.Tensor


class Confidence(NamedTuple):
    """Per hidden state: ``distance [N]`` to the nearest center, its ``id [N]``, and the
    harmonic ``probability [N]`` of that class (the model's max probability)."""

    distance: tf.Tensor
    id: tf.Tensor
    probability: tf.Tensor


def _flat(hidden_states, class_centers, distance: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Float32 ``[N, D]`` and ``[V, D]``, as ``distance`` measures them (cosine: unit rows)."""
    inputs.check_distance(distance)
    x, w, _ = inputs.flat_rows(hidden_states, class_centers)
    return measured(x, distance), measured(w, distance)


def nearest_k(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    k: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    distance: str = "euclidean",
) -> Nearest:
    """The ``k`` nearest centers of each hidden state, over vocabulary chunks.

    Args:
      hidden_states: ``[..., D]`` float (flattened to ``[N, D]``).
      class_centers: ``[V, D]`` float.
      k: how many, ``1 <= k <= min(V, chunk_size)``.
      chunk_size: classes per chunk: never more than ``[N, chunk_size]`` distances at once.
      distance: ``"euclidean"`` or ``"cosine"`` (distances between unit vectors,
        ``sqrt(2 - 2 cos)``).

    Returns:
      :class:`Nearest` with ``[N, k]`` distances (ascending) and int32 ids.

    Examples:
      >>> w = tf.constant([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
      >>> near = nearest_k(tf.constant([[0.0, 0.4]]), w, k=2)
      >>> print(near.ids.numpy(), np.round(near.distances.numpy(), 3))
      [[0 2]] [[0.4 0.6]]
    """
    x, w = _flat(hidden_states, class_centers, distance)
    vocab_size = int(w.shape[0])
    chunk_size = min(chunk_size, vocab_size)
    inputs.check_int("chunk_size", chunk_size, 1)
    inputs.check_int("k", k, 1, chunk_size)
    origin = reference_point(x)
    x = x - origin
    x_sq = tf.reduce_sum(tf.square(x), axis=-1)
    n = tf.shape(x)[0]

    def body(i, best_d2, best_ids):
        w_c, w_sq, ids, fresh = vocab_chunk(w, origin, i, chunk_size)
        d2 = expanded_sq_distances(x, w_c, x_sq, w_sq)
        d2 = tf.where(fresh[None, :], d2, float("inf"))  # the overlapping last chunk
        both_d2 = tf.concat([best_d2, d2], axis=1)
        both_ids = tf.concat([best_ids, tf.broadcast_to(ids[None, :], tf.shape(d2))], axis=1)
        # top_k keeps the first of equal values: earlier chunks, so lower ids, win ties.
        neg, where = tf.math.top_k(-both_d2, k=k)
        return -neg, tf.gather(both_ids, where, batch_dims=1)

    init = (tf.fill([n, k], float("inf")), tf.zeros([n, k], tf.int32))
    _, ids = _kernel.loop(num_chunks_of(vocab_size, chunk_size), body, init)
    # The k distances again from the explicit difference: the one-matmul expansion cancels
    # when a hidden state sits on a center (a prototype's own example).
    diff = x[:, None, :] - (tf.gather(w, ids) - origin)
    return Nearest(tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1)), ids)


def nearest_centers(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    chunk_size: int | None = None,
    distance: str = "euclidean",
) -> tf.Tensor:
    """``[N]`` int32 id of each hidden state's nearest center (the harmonic argmax, for any
    ``eta > 0``) for float32 ``[N, D]`` hidden states and ``[V, D]`` centers; with
    ``chunk_size``, never more than ``[N, chunk_size]`` distances at once (:func:`nearest_k`).
    Ties go to the lower id, as ``argmax`` does.

    Examples:
      >>> print(nearest_centers(tf.constant([[2.9, 0.0]]), tf.constant([[0.0, 0.0], [3.0, 0.0]])).numpy())
      [1]
    """
    x, w = _flat(hidden_states, class_centers, distance)
    if chunk_size is None or chunk_size >= int(w.shape[0]):
        origin = reference_point(x)
        d2 = expanded_sq_distances(x - origin, w - origin)
        return tf.argmin(d2, axis=-1, output_type=tf.int32)
    return nearest_k(x, w, 1, chunk_size).ids[:, 0]


def harmonic_confidence(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    eta: float | tf.Tensor | None = None,
    eps: float = 1e-9,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    distance: str = "euclidean",
) -> Confidence:
    """Distance as confidence: each hidden state's nearest-center distance and the harmonic
    probability of that class, over vocabulary chunks (no ``[N, V]`` tensor).

    The distance is absolute: far from every center means far from anything the model has
    learned, however the probabilities are spread. The probability
    ``p_max = d_min^-eta / sum_j d_j^-eta`` is relative: 1 when one center is much nearer
    than the others, ``1 / V`` when all are equally far.

    Examples:
      >>> w = tf.constant([[0.0, 0.0], [4.0, 0.0]])
      >>> x = tf.constant([[1.0, 0.0], [2.0, 9.0]])  # near center 0; far from both, halfway
      >>> conf = harmonic_confidence(x, w, eta=2.0)
      >>> print(conf.id.numpy(), np.round(conf.distance.numpy(), 2), np.round(conf.probability.numpy(), 2))
      [0 0] [1.   9.22] [0.9 0.5]
    """
    x, w = _flat(hidden_states, class_centers, distance)
    eta = inputs.resolve_eta(eta, int(x.shape[-1]), distance)
    inputs.check_positive("eps", eps)
    chunk_size = min(chunk_size, int(w.shape[0]))
    # The nearest few classes dominate the sum and are where the one-matmul expansion
    # cancels: their terms come from exact distances, the rest from the chunked expansion.
    near = nearest_k(x, w, min(EXACT_NEAREST, chunk_size), chunk_size)
    z_near = logits_from_sq(tf.square(near.distances), eta, eps)  # [N, k], the first largest
    origin = reference_point(x)
    x = x - origin
    x_sq = tf.reduce_sum(tf.square(x), axis=-1)

    def body(i, total):
        w_c, w_sq, ids, fresh = vocab_chunk(w, origin, i, chunk_size)
        z = logits_from_sq(expanded_sq_distances(x, w_c, x_sq, w_sq), eta, eps)
        exact = tf.reduce_any(ids[None, :, None] == near.ids[:, None, :], axis=2)
        keep = tf.logical_and(fresh[None, :], tf.logical_not(exact))
        # Relative to the nearest class's logit, the largest: no overflow, no running max.
        z = tf.where(keep, z - z_near[:, :1], -float("inf"))
        return (total + tf.reduce_sum(tf.exp(z), axis=1),)

    near_total = tf.reduce_sum(tf.exp(z_near - z_near[:, :1]), axis=1)
    (total,) = _kernel.loop(num_chunks_of(int(w.shape[0]), chunk_size), body, (near_total,))
    return Confidence(near.distances[:, 0], near.ids[:, 0], 1.0 / total)


def explained_variance(matrix: tf.Tensor, num_components: int = 2) -> tf.Tensor:
    """Fraction of the variance of the rows of ``matrix [V, D]`` (centered) along each of its
    top ``num_components`` principal axes, in float64: the paper's measure of how clean an
    embedding's geometry is (its top-2 share on modular addition).

    Examples:
      >>> line = tf.constant([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
      >>> print(np.round(explained_variance(line, 2).numpy(), 6))
      [1. 0.]
    """
    m = tf.cast(tf.convert_to_tensor(matrix), tf.float64)
    if m.shape.rank != 2:
        raise ValueError(f"`matrix` must be [V, D], got shape {m.shape}.")
    inputs.check_int("num_components", num_components, 1, min(m.shape))
    s = tf.linalg.svd(m - tf.reduce_mean(m, axis=0), compute_uv=False)
    var = tf.square(s)
    return var[:num_components] / tf.reduce_sum(var)


def principal_components(matrix: tf.Tensor, num_components: int = 2) -> tf.Tensor:
    """The rows of ``matrix [V, D]`` (centered) projected on its top ``num_components``
    principal axes: ``[V, num_components]`` float64 coordinates (for a 2-D picture).

    Examples:
      >>> line = tf.constant([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
      >>> print(np.round(np.abs(principal_components(line, 1).numpy()[:, 0]), 3))
      [1.414 0.    1.414]
    """
    m = tf.cast(tf.convert_to_tensor(matrix), tf.float64)
    if m.shape.rank != 2:
        raise ValueError(f"`matrix` must be [V, D], got shape {m.shape}.")
    inputs.check_int("num_components", num_components, 1, min(m.shape))
    centered = m - tf.reduce_mean(m, axis=0)
    _, _, v = tf.linalg.svd(centered)
    return tf.matmul(centered, v[:, :num_components])
