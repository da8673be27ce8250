"""Exact full-vocabulary harmonic loss, dense or vocabulary-chunked, with hand-written gradients.

Per token: ``loss = logsumexp_i(z_i) - z_y`` with ``z_i = -(eta/2) log(d_i^2 + eps)``; the
backward formulas (``dL/dx``, ``dL/dw`` and, for a tensor ``eta``, ``dL/deta``) are in
:mod:`harmonic_tf.gradients`. Every path measures distances from
:func:`~harmonic_tf.distances.reference_point`.

The loss is ``softplus(lse_other - z_y)`` with ``lse_other`` the log-sum-exp over the *other*
classes: ``lse - z_y`` would cancel catastrophically when the loss is tiny and the logits large
(large ``eta``), and ``1 - p_y = sigmoid(lse_other - z_y)`` keeps the true-class gradient exact.
"""

from __future__ import annotations

import tensorflow as tf

from harmonic_tf import _inputs
from harmonic_tf.distances import (
    expanded_sq_distances,
    logits_from_sq,
    reference_point,
    true_sq_distances,
)
from harmonic_tf.gradients import (
    center_grad,
    coefficients,
    custom_gradient_with_eta,
    eta_gradient,
    expected_l,
    hidden_grad,
    true_pull,
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
    weights: tf.Tensor | None = None,
    path: str = "auto",
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
        ``[N, chunk_size]`` of them.
      weights: per-token weights in the labels' shape, or one per sequence (``[B]``): the
        reduction is ``sum(weights * loss)``, divided by the count of non-ignored tokens for
        ``"mean"`` (Keras's ``sample_weight`` convention).
      path: with ``chunk_size``: ``"two_pass"``: a running log-sum-exp over vocabulary chunks,
        recomputed chunk by chunk in the backward pass; ``"fused"`` (reduced losses only):
        ``N * chunk_size // V`` tokens at a time with their full rows, gradients computed in the
        forward pass (3 matmuls instead of 4, as fused linear cross-entropy kernels do);
        ``"auto"``: fused under a gradient tape when that gives at least ``MIN_FUSED_ROWS``
        tokens per chunk, two-pass otherwise.

    Returns:
      float32 loss: a scalar, or per-token losses in the labels' shape for ``reduction="none"``.

    Example:
    >>> x = tf.random.stateless_normal([8, 16], seed=[0, 1])
    >>> w = tf.random.stateless_normal([100, 16], seed=[0, 2])
    >>> y = tf.constant([3, 14, 15, 92, 65, 35, 89, 79])
    >>> dense = harmonic_loss(x, w, y, eta=32.0)
    >>> chunked = harmonic_loss(x, w, y, eta=32.0, chunk_size=32)  # never a [8, 100] tensor
    >>> print(f"{float(dense):.4f} {float(chunked):.4f}")
    13.1943 13.1943
    """
    _inputs.check_choice("reduction", reduction, _inputs.REDUCTIONS)
    _inputs.check_choice("path", path, PATHS)
    _inputs.check_positive("eps", eps)
    if chunk_size is not None:
        _inputs.check_int("chunk_size", chunk_size, 1)
    p = _inputs.prepare(hidden_states, class_centers, labels, ignore_index)
    eta = _inputs.resolve_eta(eta, p.dim)
    if _takes_fused_path(path, p, chunk_size, reduction):
        per_token = _inputs.token_weights(p, reduction, weights)
        return fused_weighted_loss(p.x, p.w, p.labels, per_token, eta, eps, chunk_size)
    losses = exact_token_losses(p.x, p.w, p.labels, eta, eps, chunk_size)
    return _inputs.finish(losses, p, reduction, weights=weights)


PATHS = ("auto", "fused", "two_pass")


# The fused path adds one [V, D] update per token chunk of `rows` tokens; with fewer rows per
# chunk that memory traffic costs more than the two-pass path's extra matmul. Measured at
# chunk 2,048 (forward+backward, XLA, 2 cores): 41 rows (V=50,257, N=1,024, D=512) fused 1.3x
# slower, and slower at 64 rows (V=131,072, N=4,096); 83 rows (V=50,257, N=2,048) a tie at D=512
# and fused 1.12x faster at D=128; 166 rows (N=4,096, D=512) fused 1.27x faster.
MIN_FUSED_ROWS = 80


def _takes_fused_path(path: str, p: _inputs.Prepared, chunk_size, reduction: str) -> bool:
    """``"auto"``: fused when chunked, the token count is static, each token chunk has at
    least ``MIN_FUSED_ROWS`` tokens, and a gradient tape is recording (at trace time for
    tf.function): without a tape the forward-only pass is 1 matmul, not 3."""
    from tensorflow.python.eager import record

    if path == "fused":
        if chunk_size is None or reduction == "none" or p.num_tokens is None:
            raise ValueError(
                "path='fused' needs `chunk_size`, a reduced loss (`reduction` 'mean' or 'sum') "
                f"and a static token count; got chunk_size={chunk_size}, "
                f"reduction={reduction!r}, hidden_states with {p.num_tokens} tokens."
            )
        return True
    if path == "two_pass" or reduction == "none":
        return False
    if chunk_size is None or chunk_size >= p.vocab_size or p.num_tokens is None:
        return False
    rows, _ = _fused_rows(p.num_tokens, p.vocab_size, chunk_size)
    return rows >= min(MIN_FUSED_ROWS, p.num_tokens) and bool(record.could_possibly_record())


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

    def _loss(x, w, e):
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
                d_eta += eta_gradient(expected_l(z, lse, e), margin, d2_true, gc, eps)
            c = coefficients(z, lse, gc, e, eps)
            pull = true_pull(margin, d2_true, diff_true, gc, e, eps)
            return (
                i + 1,
                total,
                d_eta,
                # Accumulated in place: a separate c^T x sum would be a second [V, D] buffer.
                dw + center_grad(c, xc, w),
                dx_parts.write(i, pull + hidden_grad(c, xc, w)),
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

    return custom_gradient_with_eta(_loss, x, w, eta)


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

    def _loss(x, w, e):
        origin = reference_point(x)
        # Chunks shift their own centers: no shifted [V, D] copy unless the logits are dense.
        x = x - origin
        if chunk_size is None:
            w = w - origin
        d2_true, diff_true = true_sq_distances(x, w, labels, None if chunk_size is None else origin)
        z_true = logits_from_sq(d2_true, e, eps)
        if chunk_size is None:
            z = _dense_other_logits(x, w, labels, e, eps)
            lse_other = tf.reduce_logsumexp(z, axis=-1)
        else:
            z = None
            lse_other = _chunked_lse_other(x, w, origin, labels, e, eps, chunk_size)
        margin = lse_other - z_true
        loss = tf.math.softplus(margin)

        def grad(upstream):
            g = tf.cast(upstream, tf.float32)
            lse = z_true + loss
            pull = true_pull(margin, d2_true, diff_true, g, e, eps)
            if chunk_size is None:
                c = coefficients(z, lse, g, e, eps)
                dx, dw = hidden_grad(c, x, w), center_grad(c, x, w)
                other_l = expected_l(z, lse, e) if learn_eta else None
            else:
                dx, dw, other_l = _chunked_backward(
                    x, w, origin, labels, lse, g, e, eps, chunk_size, learn_eta
                )
            d_eta = eta_gradient(other_l, margin, d2_true, g, eps) if learn_eta else None
            dx += pull
            dw = tf.tensor_scatter_nd_add(dw, labels[:, None], -pull)
            return dx, dw, d_eta

        return loss, grad

    return custom_gradient_with_eta(_loss, x, w, eta)


def _true_column(labels: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    return tf.equal(ids[None, :], labels[:, None])


def _dense_other_logits(x, w, labels, eta, eps, w_sq=None):
    """``[N, V]`` logits with the true column at -inf (it is handled exactly on its own)."""
    z = logits_from_sq(expanded_sq_distances(x, w, None, w_sq), eta, eps)
    ids = tf.range(tf.shape(w)[0])
    return tf.where(_true_column(labels, ids), -float("inf"), z)


def _num_chunks(vocab_size: int, chunk_size: int) -> int:
    return -(-vocab_size // chunk_size)


def _chunk(w: tf.Tensor, origin: tf.Tensor, i: tf.Tensor, chunk_size: int):
    """Chunk ``i`` of the centers, shifted by ``origin``, sliced without a padded copy: rows
    ``[start, start + C)`` with ``start = min(i C, V - C)``, so the last chunk overlaps the one
    before. Returns the rows ``[C, D]``, their squared norms, class ids ``[C]``, whether each id
    is new to this chunk (not counted before), and ``start``."""
    vocab_size = int(w.shape[0])
    start = tf.minimum(i * chunk_size, vocab_size - chunk_size)
    ids = start + tf.range(chunk_size)
    # A gather, not a dynamic slice: XLA:CPU padded the whole operand for the slice.
    w_c = tf.gather(w, ids) - origin
    return w_c, tf.reduce_sum(tf.square(w_c), axis=-1), ids, ids >= i * chunk_size, start


def _chunk_logits(x, x_sq, w, origin, labels, i, eta, eps, chunk_size):
    """``[N, C]`` logits of chunk ``i``, the true class and ids of earlier chunks at -inf,
    with the chunk's distances, rows and ids."""
    w_c, w_sq, ids, fresh, _ = _chunk(w, origin, i, chunk_size)
    d2 = expanded_sq_distances(x, w_c, x_sq, w_sq)
    keep = tf.logical_and(tf.logical_not(_true_column(labels, ids)), fresh[None, :])
    return tf.where(keep, logits_from_sq(d2, eta, eps), -float("inf")), d2, w_c, ids


def _chunked_lse_other(x, w, origin, labels, eta, eps, chunk_size):
    """Running log-sum-exp over vocabulary chunks, the true class excluded."""
    num_chunks = _num_chunks(int(w.shape[0]), chunk_size)
    x_sq = tf.reduce_sum(tf.square(x), axis=-1)

    def body(i, running_max, running_sum):
        z, *_ = _chunk_logits(x, x_sq, w, origin, labels, i, eta, eps, chunk_size)
        new_max = tf.maximum(running_max, tf.reduce_max(z, axis=-1))
        running_sum = running_sum * tf.exp(running_max - new_max) + tf.reduce_sum(
            tf.exp(z - new_max[:, None]), axis=-1
        )
        return i + 1, new_max, running_sum

    # A finite start: a chunk holding only the true class must not give inf - inf.
    lowest = tf.fill(tf.shape(x_sq), tf.float32.min)
    _, m, s = tf.while_loop(
        lambda i, *_: i < num_chunks,
        body,
        (tf.constant(0), lowest, tf.zeros_like(x_sq)),
        maximum_iterations=num_chunks,
    )
    return m + tf.math.log(s)


def _chunked_backward(x, w, origin, labels, lse, g, eta, eps, chunk_size, learn_eta=False):
    """Recomputes each chunk's distances (a loop of its own, so XLA cannot merge it with the
    forward one) and accumulates the other classes' ``dL/dx``, the center gradient (added in
    place into one ``[V, D]`` buffer: the output) and, for a learned exponent,
    ``sum_i p_i l_i`` over them (else that output is ``None``)."""
    num_chunks = _num_chunks(int(w.shape[0]), chunk_size)
    x_sq = tf.reduce_sum(tf.square(x), axis=-1)

    def body(i, dx, other_l, dw):
        z, d2, w_c, ids = _chunk_logits(x, x_sq, w, origin, labels, i, eta, eps, chunk_size)
        c = coefficients(z, lse, g, eta, eps, d2)
        if learn_eta:
            other_l += expected_l(z, lse, eta)
        # Rows seen in an earlier chunk have c = 0 here, so adding leaves them as they were.
        dw = tf.tensor_scatter_nd_add(dw, ids[:, None], center_grad(c, x, w_c))
        return i + 1, dx + hidden_grad(c, x, w_c), other_l, dw

    _, dx, other_l, dw = tf.while_loop(
        lambda i, *_: i < num_chunks,
        body,
        (tf.constant(0), tf.zeros_like(x), tf.zeros_like(lse), tf.zeros_like(w)),
        maximum_iterations=num_chunks,
    )
    return dx, dw, other_l if learn_eta else None


def nearest_centers(
    hidden_states: tf.Tensor, class_centers: tf.Tensor, chunk_size: int | None = None
) -> tf.Tensor:
    """``[N]`` int32 id of each hidden state's nearest center (the harmonic argmax, for any
    ``eta > 0``) for float32 ``[N, D]`` hidden states and ``[V, D]`` centers; with
    ``chunk_size``, never more than ``[N, chunk_size]`` distances at once. Ties go to the
    lower id, as ``argmax`` does."""
    x, w = hidden_states, class_centers
    origin = reference_point(x)
    x = x - origin
    vocab_size = int(w.shape[0])
    if chunk_size is None or chunk_size >= vocab_size:
        return tf.argmin(expanded_sq_distances(x, w - origin), axis=-1, output_type=tf.int32)
    num_chunks = _num_chunks(vocab_size, chunk_size)
    x_sq = tf.reduce_sum(tf.square(x), axis=-1)

    def body(i, best_d2, best_id):
        w_c, w_sq, ids, _, start = _chunk(w, origin, i, chunk_size)
        d2 = expanded_sq_distances(x, w_c, x_sq, w_sq)
        chunk_best = tf.reduce_min(d2, axis=-1)
        chunk_id = start + tf.argmin(d2, axis=-1, output_type=tf.int32)
        better = chunk_best < best_d2  # strict: an earlier chunk keeps a tie
        return i + 1, tf.where(better, chunk_best, best_d2), tf.where(better, chunk_id, best_id)

    _, _, best_id = tf.while_loop(
        lambda i, *_: i < num_chunks,
        body,
        (tf.constant(0), tf.fill(tf.shape(x_sq), float("inf")), tf.zeros_like(x_sq, tf.int32)),
        maximum_iterations=num_chunks,
    )
    return best_id
