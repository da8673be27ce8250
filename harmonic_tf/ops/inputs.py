"""Argument checks, input flattening and loss reduction shared by every loss.

Static problems (ranks, shapes, enums, ranges) raise ``ValueError``/``TypeError`` at trace time,
before any computation. Label range is data: it is asserted at run time (eager and graph), and
because XLA compiles asserts to nothing, invalid rows also carry a NaN loss and NaN gradients.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import tensorflow as tf

REDUCTIONS = ("mean", "sum", "none")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a positive number, got {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise ValueError(f"`{name}` must be >= {low}{upper}, got {value}.")


DISTANCES = ("euclidean", "cosine")

# eta=None for the cosine distance (d^2 = 2 - 2 cos in [0, 4], whatever D is): the best of the
# language model's sweep in docs/training-quality.md ("Cosine harmonic heads"; the CIFAR-10 CNN
# wanted 32).
COSINE_ETA = 16.0


def check_distance(distance: str) -> None:
    check_choice("distance", distance, DISTANCES)


def default_eta(dim: int, distance: str = "euclidean") -> float:
    """The exponent that ``eta=None`` means for hidden size ``D``: ``2 D`` for the Euclidean
    distance, the paper's released code (``pow_n = D`` on the squared distance) and the best of
    the README's exponent sweeps; a constant for the cosine distance, whose range does not grow
    with ``D`` (the best of the language model's sweep, ``docs/training-quality.md``).

    Examples:
      >>> default_eta(128), default_eta(128, "cosine")
      (256.0, 16.0)
    """
    check_distance(distance)
    return COSINE_ETA if distance == "cosine" else 2.0 * dim


def resolve_eta(eta, dim: int, distance: str = "euclidean") -> float | tf.Tensor:
    """``eta=None`` means :func:`default_eta`; a number is checked and returned as a float; a
    scalar float tensor or variable (a learned exponent) is returned as a float32 tensor, so the
    losses can return its gradient. Its positivity is asserted at run time outside XLA."""
    if eta is None:
        return default_eta(dim, distance)
    if isinstance(eta, numbers.Real) and not isinstance(eta, bool):
        check_positive("eta", float(eta))
        return float(eta)
    if isinstance(eta, (str, bool)) or not hasattr(eta, "dtype"):
        raise TypeError(f"`eta` must be a positive number or a scalar float tensor, got {eta!r}.")
    t = tf.convert_to_tensor(eta)
    if not t.dtype.is_floating or t.shape.rank != 0:
        raise ValueError(
            f"`eta` as a tensor must be a float scalar, got dtype {t.dtype.name} shape {t.shape}."
        )
    t = tf.cast(t, tf.float32)
    tf.debugging.assert_positive(t, message="`eta` must be > 0")  # a no-op under XLA
    return t


@dataclasses.dataclass
class Prepared:
    """Flattened float32 inputs plus what is needed to reduce per-token losses."""

    x: tf.Tensor  # [N, D] float32
    w: tf.Tensor  # [V, D] float32
    labels: tf.Tensor  # [N] int32, ignored/invalid rows replaced by 0 (safe to gather)
    ignored: tf.Tensor  # [N] bool
    invalid: tf.Tensor  # [N] bool: outside [0, V) and not ignore_index
    labels_shape: tf.Tensor
    num_tokens: int | None
    vocab_size: int
    dim: int
    labels_rank: int


def _static_dim(t: tf.Tensor, axis: int, name: str) -> int:
    d = t.shape[axis]
    if d is None:
        raise ValueError(f"`{name}` needs a static size on axis {axis}, got shape {t.shape}.")
    return int(d)


def prepare(hidden_states, class_centers, labels, ignore_index: int | None) -> Prepared:
    """Checks shapes/dtypes, flattens ``[B, S, D]`` to ``[N, D]`` and casts math to float32."""
    x = tf.convert_to_tensor(hidden_states)
    w = tf.convert_to_tensor(class_centers)
    y = tf.convert_to_tensor(labels)
    if not x.dtype.is_floating:
        raise TypeError(f"`hidden_states` must be a float tensor, got dtype {x.dtype.name}.")
    if not w.dtype.is_floating:
        raise TypeError(f"`class_centers` must be a float tensor, got dtype {w.dtype.name}.")
    if not y.dtype.is_integer:
        raise TypeError(
            f"`labels` must be an integer tensor (class ids), got dtype {y.dtype.name}; "
            "cast float labels with tf.cast(labels, tf.int32) after checking they are whole."
        )
    if x.shape.rank not in (2, 3):
        raise ValueError(f"`hidden_states` must be [N, D] or [B, S, D], got shape {x.shape}.")
    if w.shape.rank != 2:
        raise ValueError(f"`class_centers` must be [V, D], got shape {w.shape}.")
    dim = _static_dim(x, -1, "hidden_states")
    vocab_size = _static_dim(w, 0, "class_centers")
    if _static_dim(w, 1, "class_centers") != dim:
        raise ValueError(
            f"`class_centers` must be [V, D] with D = {dim} (the last axis of `hidden_states`), "
            f"got shape {w.shape}."
        )
    if vocab_size < 2:
        raise ValueError(f"`class_centers` needs at least 2 classes, got shape {w.shape}.")
    if y.shape.rank != x.shape.rank - 1 or not y.shape.is_compatible_with(x.shape[:-1]):
        raise ValueError(
            f"`labels` must have shape {x.shape[:-1]} (the leading axes of `hidden_states` "
            f"{x.shape}), got {y.shape}."
        )
    labels_shape, labels_rank = tf.shape(y), y.shape.rank
    x = tf.reshape(tf.cast(x, tf.float32), [-1, dim])
    w = tf.cast(w, tf.float32)
    safe, ignored, invalid = checked_labels(tf.reshape(y, [-1]), vocab_size, ignore_index)
    n = x.shape[0]
    return Prepared(x, w, safe, ignored, invalid, labels_shape, n, vocab_size, dim, labels_rank)


def checked_labels(labels: tf.Tensor, vocab_size, ignore_index: int | None):
    """``(safe, ignored, invalid)`` for int ``labels`` of any shape and ``V`` (an int or a
    scalar tensor): int32 labels with ignored and invalid ones replaced by 0 (safe to gather),
    and the two masks. Every loss checks its labels here: an invalid label (outside ``[0, V)``,
    not ``ignore_index``) fails eagerly and in graph mode; XLA compiles asserts to nothing, so
    the losses also give such rows a NaN loss and NaN gradients."""
    y = tf.cast(labels, tf.int32)
    ignored = ignored_mask(y, ignore_index)
    invalid = tf.logical_and(
        tf.logical_not(ignored), tf.logical_or(tf.less(y, 0), tf.greater_equal(y, vocab_size))
    )
    bound = f" = [0, {vocab_size})" if isinstance(vocab_size, int) else ""
    tf.debugging.assert_equal(
        tf.reduce_any(invalid),
        False,
        message=f"`labels` must be in [0, V){bound} or equal ignore_index={ignore_index}",
    )
    return tf.where(tf.logical_or(ignored, invalid), tf.zeros_like(y), y), ignored, invalid


def flat_rows(hidden_states, class_centers) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(x [N, D], w [V, D], lead)``: float32 hidden states ``[..., D]`` flattened to rows,
    the centers, and the hidden states' leading shape (to reshape per-row results back)."""
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
    flat = tf.reshape(tf.cast(x, tf.float32), [-1, x.shape[-1]])
    return flat, tf.cast(w, tf.float32), tf.shape(x)[:-1]


def ignored_mask(labels: tf.Tensor, ignore_index: int | None) -> tf.Tensor:
    """Where ``labels`` equals ``ignore_index`` (all False for ``None``)."""
    if ignore_index is None:
        return tf.zeros_like(labels, dtype=tf.bool)
    return tf.equal(labels, ignore_index)


def flat_weights(weights, labels_shape: tf.Tensor, labels_rank: int) -> tf.Tensor:
    """Per-token weights ``[N]`` from ``weights`` in the labels' shape, or ``[B]`` / ``[B, 1]``
    (one per sequence) for ``[B, S]`` labels."""
    wt = tf.convert_to_tensor(weights)
    if not (wt.dtype.is_floating or wt.dtype.is_integer or wt.dtype == tf.bool):
        raise TypeError(f"`weights` must be numeric, got dtype {wt.dtype.name}.")
    wt = tf.cast(wt, tf.float32)
    rank = wt.shape.rank
    if rank is None:
        raise ValueError(
            f"`weights` must have a known rank: the labels' shape (rank {labels_rank}) or one "
            "weight per sequence; give the tensor a static rank (e.g. tf.ensure_shape)."
        )
    if rank == labels_rank + 1 and wt.shape[-1] == 1:
        wt = tf.squeeze(wt, -1)
        rank -= 1
    if rank > labels_rank:
        raise ValueError(
            f"`weights` must have the labels' shape (rank {labels_rank}) or fewer leading axes, "
            f"got shape {wt.shape}."
        )
    for _ in range(labels_rank - rank):
        wt = wt[..., None]
    return tf.reshape(tf.broadcast_to(wt, labels_shape), [-1])


def token_weights(p: Prepared, reduction: str, weights=None) -> tf.Tensor:
    """Per-token weights ``[N]`` that turn ``sum(w * loss)`` into the reduction: 0 where ignored,
    NaN where the label is invalid, the given ``weights`` (default 1) elsewhere, divided by the
    count of non-ignored tokens for ``"mean"``."""
    keep = tf.cast(tf.logical_not(p.ignored), tf.float32)
    scaled = (
        keep if weights is None else keep * flat_weights(weights, p.labels_shape, p.labels_rank)
    )
    if reduction == "mean":
        scaled = tf.math.divide_no_nan(scaled, tf.reduce_sum(keep))
    return tf.where(p.invalid, float("nan"), scaled)


def finish(
    losses: tf.Tensor,
    p: Prepared,
    reduction: str,
    also_invalid: tf.Tensor | None = None,
    weights=None,
) -> tf.Tensor:
    """Reduces per-token ``losses [N]``: ignored rows count 0, invalid rows (and
    ``also_invalid [N]`` ones) are NaN, loss and gradient; see :func:`token_weights`."""
    per_token = token_weights(p, "sum" if reduction == "none" else reduction, weights)
    if also_invalid is not None:
        per_token = tf.where(also_invalid, float("nan"), per_token)
    # Zero-weight rows must not turn 0 * inf into NaN.
    losses = tf.where(per_token == 0.0, 0.0, per_token * losses)
    if reduction == "none":
        return tf.reshape(losses, p.labels_shape)
    return tf.reduce_sum(losses)
