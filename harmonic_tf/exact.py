"""Exact full-vocabulary harmonic loss, dense or vocabulary-chunked, with hand-written gradients.

Per token: ``loss = logsumexp_i(z_i) - z_y`` with ``z_i = -(eta/2) log(d_i^2 + eps)``.
With ``c_i = dL/d(d_i^2) = (p_i - [i=y]) * (-(eta/2)) / (d_i^2 + eps)``:
``dL/dx = 2 sum_i c_i (x - w_i)`` and ``dL/dw_i = -2 sum_n c_ni (x_n - w_i)``.
The true-class term uses the explicit difference ``x - w_y``; the rest uses
``2 (sum_i c_i) x - 2 c W`` (two matmuls), so no ``[N, V, D]`` tensor exists.

With a tensor ``eta`` (a learned exponent) the backward pass also returns
``dL/deta = sum_i (p_i - [i=y]) l_i`` with ``l_i = dz_i/deta = -(1/2) log(d_i^2 + eps)``.
Every path measures distances from :func:`~harmonic_tf.distances.reference_point`.

The loss is ``softplus(lse_other - z_y)`` with ``lse_other`` the log-sum-exp over the *other*
classes: ``lse - z_y`` would cancel catastrophically when the loss is tiny and the logits large
(large ``eta``), and ``1 - p_y = sigmoid(lse_other - z_y)`` keeps the true-class gradient exact.
"""

from __future__ import annotations

import tensorflow as tf

from harmonic_tf import _inputs
from harmonic_tf.distances import (
    expanded_sq_distances,
    log_distances,
    logits_from_sq,
    reference_point,
    true_sq_distances,
)


def harmonic_loss(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    labels: tf.Tensor,
    eta: float | tf.Tensor | None = None,
    eps: float = 1e-9,
    reduction: str = "mean",
    ignore_index: int | None = -100,
    chunk_size: int | None = None,
) -> tf.Tensor:
    """Exact harmonic (HarMax) cross-entropy over all ``V`` classes.

    Args:
      hidden_states: ``[N, D]`` or ``[B, S, D]`` float.
      class_centers: ``[V, D]`` float, one center per class.
      labels: ``[N]`` or ``[B, S]`` int class ids in ``[0, V)`` or ``ignore_index``.
      eta: harmonic exponent on the plain L2 distance: a number, a scalar float tensor or
        variable (its gradient is returned: a learned exponent), or ``None`` (default rule).
      eps: added to squared distances before the log.
      reduction: ``"mean"`` (over non-ignored tokens), ``"sum"`` or ``"none"`` (labels' shape).
      ignore_index: label value whose tokens contribute nothing (``None``: no label is ignored).
      chunk_size: ``None`` builds ``[N, V]`` logits once; an int never holds more than
        ``[N, chunk_size]`` of them. Per-token losses (and any call without a gradient tape)
        use a running log-sum-exp over vocabulary chunks, recomputed chunk by chunk in the
        backward pass; a reduced loss under a tape is fused instead when that gives at least
        128 tokens per chunk (``N * chunk_size // V >= 128``): full rows for that many tokens at
        a time, gradients computed in the forward pass (3 matmuls instead of 4, as fused linear
        cross-entropy kernels do).

    Returns:
      float32 loss: a scalar, or per-token losses in the labels' shape for ``reduction="none"``.

    Example:
    >>> x = tf.random.normal([8, 16]); w = tf.random.normal([100, 16])
    >>> y = tf.random.uniform([8], 0, 100, tf.int32)
    >>> loss = harmonic_loss(x, w, y, chunk_size=32)  # same value as chunk_size=None
    """
    _inputs.check_choice("reduction", reduction, _inputs.REDUCTIONS)
    _inputs.check_positive("eps", eps)
    if chunk_size is not None:
        _inputs.check_int("chunk_size", chunk_size, 1)
    p = _inputs.prepare(hidden_states, class_centers, labels, ignore_index)
    eta = _inputs.resolve_eta(eta, p.dim)
    if reduction == "none":
        losses = exact_token_losses(p.x, p.w, p.labels, eta, eps, chunk_size)
        return _inputs.finish(losses, p, reduction)
    return weighted_exact_loss(p, _inputs.token_weights(p, reduction), eta, eps, chunk_size)


def weighted_exact_loss(
    p: _inputs.Prepared,
    weights: tf.Tensor,
    eta: float | tf.Tensor,
    eps: float,
    chunk_size: int | None,
) -> tf.Tensor:
    """``sum_n weights_n * loss_n`` (weights 0 where ignored), fused where that is cheaper."""
    if _use_fused(p.num_tokens, p.vocab_size, chunk_size):
        return fused_weighted_loss(p.x, p.w, p.labels, weights, eta, eps, chunk_size)
    losses = exact_token_losses(p.x, p.w, p.labels, eta, eps, chunk_size)
    return tf.reduce_sum(tf.where(weights == 0.0, 0.0, weights * losses))


# The fused path adds one [V, D] update per token chunk of `rows` tokens; with fewer rows per
# chunk that memory traffic costs more than the two-pass path's extra matmul (measured on
# XLA:CPU with benchmarks/bench_loss.py: V=131,072 or N=1,024 at chunk 2,048 ran 1.4-1.9x slower
# fused than two-pass).
MIN_FUSED_ROWS = 128


def _use_fused(num_tokens: int | None, vocab_size: int, chunk_size: int | None) -> bool:
    """Fused when chunked, the token count is static, each token chunk has at least
    ``MIN_FUSED_ROWS`` tokens, and a gradient tape is recording (at trace time for tf.function):
    without a tape the forward-only pass is 1 matmul, not 3."""
    from tensorflow.python.eager import record

    if chunk_size is None or chunk_size >= vocab_size or num_tokens is None:
        return False
    rows, _ = _fused_rows(num_tokens, vocab_size, chunk_size)
    return rows >= min(MIN_FUSED_ROWS, num_tokens) and bool(record.could_possibly_record())


def _fused_rows(n: int, vocab_size: int, chunk_size: int) -> tuple[int, int]:
    """Tokens per chunk (so ``rows * V <= N * chunk_size``) and the number of chunks."""
    rows = max(1, min(n, (n * chunk_size) // vocab_size))
    return rows, -(-n // rows)


def fused_weighted_loss(
    x: tf.Tensor,
    w: tf.Tensor,
    labels: tf.Tensor,
    weights: tf.Tensor,
    eta: float | tf.Tensor,
    eps: float,
    chunk_size: int,
) -> tf.Tensor:
    """``sum_n weights_n * loss_n`` with gradients computed during the forward pass.

    Token chunks of ``rows = N * chunk_size // V`` hold ``[rows, V]`` logits (never more than
    ``[N, chunk_size]`` elements); each chunk's full rows give exact probabilities at once, so
    ``dx`` and ``dW`` accumulate with one recomputation-free pass. The backward pass only scales
    them by the upstream scalar."""
    n, dim = int(x.shape[0]), int(x.shape[1])
    vocab_size = int(w.shape[0])
    rows, num_chunks = _fused_rows(n, vocab_size, chunk_size)
    pad = num_chunks * rows - n
    learn_eta = isinstance(eta, tf.Tensor)

    @tf.custom_gradient
    def _loss(x, w, eta_in):
        e = eta_in if learn_eta else eta
        half_eta = 0.5 * e
        origin = reference_point(x)
        x, w = x - origin, w - origin
        x_chunks = tf.reshape(tf.pad(x, [[0, pad], [0, 0]]), [num_chunks, rows, dim])
        y_chunks = tf.reshape(tf.pad(labels, [[0, pad]]), [num_chunks, rows])
        g_chunks = tf.reshape(tf.pad(weights, [[0, pad]]), [num_chunks, rows])
        w_sq = tf.reduce_sum(tf.square(w), axis=-1)

        def body(i, total, d_eta, dw, dx_parts, pulls):
            xc, yc, gc = x_chunks[i], y_chunks[i], g_chunks[i]
            d2_true, diff_true = true_sq_distances(xc, w, yc)
            z_true = logits_from_sq(d2_true, e, eps)
            z = _dense_other_logits(xc, w, yc, e, eps, w_sq)
            margin = tf.reduce_logsumexp(z, axis=-1) - z_true
            loss = tf.math.softplus(margin)
            # Zero-weight rows (ignored, padding) must not turn 0 * inf into NaN.
            total += tf.reduce_sum(tf.where(gc == 0.0, 0.0, gc * loss))
            lse = z_true + loss
            if learn_eta:
                d_eta += eta_gradient(z, lse, margin, d2_true, gc, e, eps)
            c = dense_coefficients(z, lse, gc, e)
            pull = true_pull(margin, d2_true, diff_true, gc, half_eta, eps)
            dxc = pull + 2.0 * tf.reduce_sum(c, axis=1)[:, None] * xc - 2.0 * tf.matmul(c, w)
            return (
                i + 1,
                total,
                d_eta,
                # Accumulated in place: a separate c^T x sum would be a second [V, D] buffer.
                dw
                + 2.0 * tf.reduce_sum(c, axis=0)[:, None] * w
                - 2.0 * tf.matmul(c, xc, transpose_a=True),
                dx_parts.write(i, dxc),
                pulls.write(i, pull),
            )

        _, total, d_eta, dw, dx_parts, pulls = tf.while_loop(
            lambda i, *_: i < num_chunks,
            body,
            (
                tf.constant(0),
                tf.constant(0.0),
                tf.constant(0.0),
                tf.zeros([vocab_size, dim]),
                tf.TensorArray(tf.float32, size=num_chunks, element_shape=[rows, dim]),
                tf.TensorArray(tf.float32, size=num_chunks, element_shape=[rows, dim]),
            ),
            maximum_iterations=num_chunks,
        )
        dx = tf.reshape(dx_parts.stack(), [-1, dim])[:n]
        pull = tf.reshape(pulls.stack(), [-1, dim])[:n]
        dw = tf.tensor_scatter_nd_add(dw, labels[:, None], -pull)

        def grad(upstream):
            scale = tf.cast(upstream, tf.float32)
            return scale * dx, scale * dw, scale * d_eta if learn_eta else None

        return total, grad

    return _loss(x, w, eta if learn_eta else tf.constant(0.0))


def exact_token_losses(
    x: tf.Tensor,
    w: tf.Tensor,
    labels: tf.Tensor,
    eta: float | tf.Tensor,
    eps: float,
    chunk_size: int | None,
) -> tf.Tensor:
    """Per-token exact loss ``[N]`` for float32 ``x [N, D]``, ``w [V, D]`` and valid ``labels [N]``."""
    vocab_size = int(w.shape[0])
    if chunk_size is not None and chunk_size >= vocab_size:
        chunk_size = None
    learn_eta = isinstance(eta, tf.Tensor)

    @tf.custom_gradient
    def _loss(x, w, eta_in):
        e = eta_in if learn_eta else eta
        half_eta = 0.5 * e
        origin = reference_point(x)
        x, w = x - origin, w - origin
        d2_true, diff_true = true_sq_distances(x, w, labels)
        z_true = logits_from_sq(d2_true, e, eps)
        if chunk_size is None:
            z = _dense_other_logits(x, w, labels, e, eps)
            lse_other = tf.reduce_logsumexp(z, axis=-1)
        else:
            z = None
            lse_other = _chunked_lse_other(x, w, labels, e, eps, chunk_size)
        margin = lse_other - z_true
        loss = tf.math.softplus(margin)

        def grad(upstream):
            g = tf.cast(upstream, tf.float32)
            lse = z_true + loss
            pull = true_pull(margin, d2_true, diff_true, g, half_eta, eps)
            if chunk_size is None:
                c = dense_coefficients(z, lse, g, e)
                row_sum = tf.reduce_sum(c, axis=1)
                cw = tf.matmul(c, w)
                dw = 2.0 * tf.reduce_sum(c, axis=0)[:, None] * w - 2.0 * tf.matmul(
                    c, x, transpose_a=True
                )
                d_eta = eta_gradient(z, lse, margin, d2_true, g, e, eps) if learn_eta else None
            else:
                row_sum, cw, dw, expected_l = _chunked_backward(
                    x, w, labels, lse, g, e, eps, chunk_size, learn_eta
                )
                d_eta = (
                    tf.reduce_sum(g * expected_l) - true_eta_term(margin, d2_true, g, eps)
                    if learn_eta
                    else None
                )
            dx = pull + 2.0 * row_sum[:, None] * x - 2.0 * cw
            dw = tf.tensor_scatter_nd_add(dw, labels[:, None], -pull)
            return dx, dw, d_eta

        return loss, grad

    return _loss(x, w, eta if learn_eta else tf.constant(0.0))


def eta_gradient(z, lse, margin, d2_true, g, eta, eps):
    """``sum_n g_n dL_n/deta`` from ``[N, M]`` logits of the other classes (the true column and
    masked columns at -inf): ``sum_i p_i l_i`` over them, where ``l_i = z_i / eta``, minus the
    true class's ``(1 - p_y) l_y``."""
    return tf.reduce_sum(g * expected_other_l(z, lse, eta)) - true_eta_term(margin, d2_true, g, eps)


def expected_other_l(z, lse, eta):
    """``[N]``: ``sum_i p_i z_i / eta`` over the finite columns of ``z`` (``p = exp(z - lse)``)."""
    p = tf.exp(z - lse[:, None])
    return tf.reduce_sum(tf.where(p > 0.0, p * z, 0.0), axis=1) / eta


def true_eta_term(margin, d2_true, g, eps):
    """``sum_n g_n (1 - p_y) l_y`` with ``1 - p_y = sigmoid(margin)``; 0 where ``g`` is 0."""
    term = g * tf.math.sigmoid(margin) * log_distances(d2_true, eps)
    return tf.reduce_sum(tf.where(g == 0.0, 0.0, term))


def true_pull(margin, d2_true, diff_true, g, half_eta, eps):
    """True-class term of dL/dx, ``2 c_y (x - w_y)`` with ``c_y = (p_y - 1) * -(eta/2) /
    (d2_y + eps)`` and ``1 - p_y = sigmoid(lse_other - z_y)``, from the explicit difference."""
    c_true = tf.math.sigmoid(margin) * half_eta / (d2_true + eps) * g
    return 2.0 * c_true[:, None] * diff_true


def _true_column(labels: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    return tf.equal(ids[None, :], labels[:, None])


def _dense_other_logits(x, w, labels, eta, eps, w_sq=None):
    """``[N, V]`` logits with the true column at -inf (it is handled exactly on its own)."""
    z = logits_from_sq(expanded_sq_distances(x, w, None, w_sq), eta, eps)
    ids = tf.range(tf.shape(w)[0])
    return tf.where(_true_column(labels, ids), -float("inf"), z)


def dense_coefficients(z, lse, g, eta):
    """``c = -(eta/2) p / (d2 + eps)`` from the stored logits alone: ``1 / (d2 + eps) =
    exp(-2 z / eta)``. Columns at -inf (the true class) give 0."""
    return -0.5 * eta * tf.exp(z * (1.0 + 2.0 / eta) - lse[:, None]) * g[:, None]


def _chunks(w: tf.Tensor, chunk_size: int):
    """Pads ``w`` to whole chunks: ``[num_chunks, C, D]`` centers and ``[num_chunks, C]`` norms."""
    vocab_size, dim = int(w.shape[0]), int(w.shape[1])
    num_chunks = -(-vocab_size // chunk_size)
    padded = tf.pad(w, [[0, num_chunks * chunk_size - vocab_size], [0, 0]])
    w_chunks = tf.reshape(padded, [num_chunks, chunk_size, dim])
    return num_chunks, w_chunks, tf.reduce_sum(tf.square(w_chunks), axis=-1)


def _chunk_sq_distances(x, x_sq, w_chunks, w_sq, i, chunk_size):
    """Squared distances ``[N, C]`` to chunk ``i`` and that chunk's class ids ``[C]``."""
    d2 = expanded_sq_distances(x, w_chunks[i], x_sq, w_sq[i])
    return d2, i * chunk_size + tf.range(chunk_size)


def _chunked_lse_other(x, w, labels, eta, eps, chunk_size):
    """Running log-sum-exp over vocabulary chunks, the true class and padding excluded."""
    vocab_size = int(w.shape[0])
    num_chunks, w_chunks, w_sq = _chunks(w, chunk_size)
    x_sq = tf.reduce_sum(tf.square(x), axis=-1)

    def body(i, running_max, running_sum):
        d2, ids = _chunk_sq_distances(x, x_sq, w_chunks, w_sq, i, chunk_size)
        keep = tf.logical_and(tf.logical_not(_true_column(labels, ids)), ids[None, :] < vocab_size)
        z = tf.where(keep, logits_from_sq(d2, eta, eps), -float("inf"))
        new_max = tf.maximum(running_max, tf.reduce_max(z, axis=-1))
        running_sum = running_sum * tf.exp(running_max - new_max) + tf.reduce_sum(
            tf.exp(z - new_max[:, None]), axis=-1
        )
        return i + 1, new_max, running_sum

    # A finite start: a chunk holding only the true class (or padding) must not give inf - inf.
    lowest = tf.fill(tf.shape(x_sq), tf.float32.min)
    _, m, s = tf.while_loop(
        lambda i, *_: i < num_chunks,
        body,
        (tf.constant(0), lowest, tf.zeros_like(x_sq)),
        maximum_iterations=num_chunks,
    )
    return m + tf.math.log(s)


def _chunked_backward(x, w, labels, lse, g, eta, eps, chunk_size, learn_eta=False):
    """Recomputes each chunk's distances (a loop of its own, so XLA cannot merge it with the
    forward one) and accumulates ``sum_i c_i``, ``c @ W``, the chunk's center gradient and, for a
    learned exponent, ``sum_i p_i l_i`` over the other classes (else that output is ``None``)."""
    vocab_size, dim = int(w.shape[0]), int(w.shape[1])
    num_chunks, w_chunks, w_sq = _chunks(w, chunk_size)
    x_sq = tf.reduce_sum(tf.square(x), axis=-1)
    half_eta = 0.5 * eta

    def body(i, row_sum, cw, expected_l, dw_chunks):
        w_c = w_chunks[i]
        d2, ids = _chunk_sq_distances(x, x_sq, w_chunks, w_sq, i, chunk_size)
        keep = tf.logical_and(tf.logical_not(_true_column(labels, ids)), ids[None, :] < vocab_size)
        z = tf.where(keep, logits_from_sq(d2, eta, eps), -float("inf"))
        c = -half_eta * tf.exp(z - lse[:, None]) / (d2 + eps) * g[:, None]
        if learn_eta:
            expected_l += expected_other_l(z, lse, eta)
        dw_c = 2.0 * tf.reduce_sum(c, axis=0)[:, None] * w_c - 2.0 * tf.matmul(
            c, x, transpose_a=True
        )
        return (
            i + 1,
            row_sum + tf.reduce_sum(c, axis=1),
            cw + tf.matmul(c, w_c),
            expected_l,
            dw_chunks.write(i, dw_c),
        )

    _, row_sum, cw, expected_l, dw_chunks = tf.while_loop(
        lambda i, *_: i < num_chunks,
        body,
        (
            tf.constant(0),
            tf.zeros_like(lse),
            tf.zeros_like(x),
            tf.zeros_like(lse),
            tf.TensorArray(tf.float32, size=num_chunks, element_shape=[chunk_size, dim]),
        ),
        maximum_iterations=num_chunks,
    )
    dw = tf.reshape(dw_chunks.stack(), [num_chunks * chunk_size, dim])[:vocab_size]
    return row_sum, cw, dw, expected_l if learn_eta else None
