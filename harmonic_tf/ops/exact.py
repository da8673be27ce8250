"""Exact full-vocabulary harmonic loss: dense, vocabulary-chunked or token-chunked (fused).

Each path is a :class:`~harmonic_tf.ops._kernel.Columns` of the one custom-gradient kernel
(:mod:`harmonic_tf.ops._kernel`, which holds the loss and gradient formulas): ``DenseColumns``
(``[N, V]`` logits), ``VocabChunks`` (two passes over vocabulary chunks: a running
log-sum-exp, then the backward recomputed chunk by chunk) and, for reduced losses, the fused
path: token chunks with their full rows, gradients computed in the forward pass.
"""

from __future__ import annotations

import tensorflow as tf

from harmonic_tf.ops import _kernel, inputs
from harmonic_tf.ops.cosine import measured
from harmonic_tf.ops.distances import expanded_sq_distances, logits_from_sq, reference_point

PATHS = ("auto", "dense", "fused", "two_pass")

# path="auto" keeps [N, V] float32 logits up to this size (512 MiB: a training step of 2,048
# tokens at V = 65,536), where the dense step was measured fastest (docs/performance.md).
DENSE_MAX_BYTES = 512 * 2**20

# The vocabulary chunk wherever one is not given (training, evaluation, metrics, analysis):
# [tokens, 4096] float32 blocks, where the fused path was measured within a few percent of
# cross-entropy's time at LM sizes (docs/performance.md).
DEFAULT_CHUNK_SIZE = 4096

# The fused path adds one [V, D] update per token chunk of `rows` tokens; with fewer rows per
# chunk that memory traffic costs more than the two-pass path's extra matmul. Where the two
# cross over was measured (docs/performance.md, benchmarks/results/results.md).
MIN_FUSED_ROWS = 80


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
    dense_max_bytes: int = DENSE_MAX_BYTES,
    distance: str = "euclidean",
) -> tf.Tensor:
    """Exact harmonic (HarMax) cross-entropy over all ``V`` classes.

    Args:
      hidden_states: ``[N, D]`` or ``[B, S, D]`` float.
      class_centers: ``[V, D]`` float, one center per class.
      labels: ``[N]`` or ``[B, S]`` int class ids in ``[0, V)`` or ``ignore_index``.
      eta: harmonic exponent on the distance: a number, a scalar float tensor or variable (its
        gradient is returned: a learned exponent), or ``None`` (:func:`default_eta`).
      eps: added to squared distances before the log.
      reduction: ``"mean"`` (over non-ignored tokens), ``"sum"`` or ``"none"`` (labels' shape).
      ignore_index: label value whose tokens contribute nothing (``None``: no label is ignored).
      chunk_size: ``None`` builds ``[N, V]`` logits once; an int bounds them to
        ``[N, chunk_size]`` elements (unless ``path="auto"`` finds the dense block small).
      weights: per-token weights in the labels' shape, or one per sequence (``[B]``): the
        reduction is ``sum(weights * loss)``, divided by the count of non-ignored tokens for
        ``"mean"`` (Keras's ``sample_weight`` convention).
      path: with ``chunk_size``: ``"dense"``: ``[N, V]`` logits all the same;
        ``"two_pass"``: a running log-sum-exp over vocabulary chunks, recomputed chunk by chunk
        in the backward pass; ``"fused"`` (reduced losses only): ``N * chunk_size // V`` tokens
        at a time with their full rows, gradients computed in the forward pass (3 matmuls
        instead of 4, as fused linear cross-entropy kernels do; a forward-only call pays for
        them too); ``"auto"``: dense when the ``[N, V]`` float32 block takes at most
        ``dense_max_bytes`` (measured faster), else fused for a reduced loss with at least
        ``MIN_FUSED_ROWS`` tokens per chunk, else two-pass.
      dense_max_bytes: the memory budget of ``path="auto"`` for one ``[N, V]`` float32 block.
      distance: ``"euclidean"`` or ``"cosine"`` (hidden states and centers normalised, on every
        path, with the gradient through the normalisation; one unit ``[V, D]`` copy of the
        centers).

    Returns:
      float32 loss: a scalar, or per-token losses in the labels' shape for ``reduction="none"``.

    Examples:
      >>> x = tf.random.stateless_normal([8, 16], seed=[0, 1])
      >>> w = tf.random.stateless_normal([100, 16], seed=[0, 2])
      >>> y = tf.constant([3, 14, 15, 92, 65, 35, 89, 79])
      >>> dense = harmonic_loss(x, w, y, eta=32.0)
      >>> chunked = harmonic_loss(x, w, y, eta=32.0, chunk_size=32, path="two_pass")
      >>> print(f"{float(dense):.4f} {float(chunked):.4f}")  # never an [8, 100] tensor
      13.1943 13.1943
    """
    inputs.check_choice("reduction", reduction, inputs.REDUCTIONS)
    inputs.check_choice("path", path, PATHS)
    inputs.check_positive("eps", eps)
    inputs.check_int("dense_max_bytes", dense_max_bytes, 0)
    if chunk_size is not None:
        inputs.check_int("chunk_size", chunk_size, 1)
    inputs.check_distance(distance)
    p = inputs.prepare(hidden_states, class_centers, labels, ignore_index)
    eta = inputs.resolve_eta(eta, p.dim, distance)
    x, w = measured(p.x, distance), measured(p.w, distance)
    chosen = choose_path(path, p.num_tokens, p.vocab_size, chunk_size, reduction, dense_max_bytes)
    if chosen == "fused":
        per_token = inputs.token_weights(p, reduction, weights)
        return fused_weighted_loss(x, w, p.labels, per_token, eta, eps, chunk_size)
    chunk = chunk_size if chosen == "two_pass" else None
    losses = exact_token_losses(x, w, p.labels, eta, eps, chunk)
    return inputs.finish(losses, p, reduction, weights=weights)


def choose_path(
    path: str, num_tokens, vocab_size: int, chunk_size, reduction: str, dense_max_bytes: int
) -> str:
    """The path ``harmonic_loss`` takes: ``"dense"``, ``"fused"`` or ``"two_pass"``."""
    if path == "fused" and (chunk_size is None or reduction == "none" or num_tokens is None):
        raise ValueError(
            "path='fused' needs `chunk_size`, a reduced loss (`reduction` 'mean' or 'sum') "
            f"and a static token count; got chunk_size={chunk_size}, "
            f"reduction={reduction!r}, hidden_states with {num_tokens} tokens."
        )
    if chunk_size is None or chunk_size >= vocab_size or path == "dense":
        return "dense"
    if path != "auto":
        return path
    if num_tokens is None:
        return "two_pass"
    if 4 * num_tokens * vocab_size <= dense_max_bytes:
        return "dense"
    rows, _ = _fused_rows(num_tokens, vocab_size, chunk_size)
    fused = reduction != "none" and rows >= min(MIN_FUSED_ROWS, num_tokens)
    return "fused" if fused else "two_pass"


def _fused_rows(n: int, vocab_size: int, chunk_size: int) -> tuple[int, int]:
    """Tokens per chunk (so ``rows * V <= N * chunk_size``) and the number of chunks."""
    rows = max(1, min(n, (n * chunk_size) // vocab_size))
    return rows, -(-n // rows)


def exact_token_losses(x, w, labels, eta, eps: float, chunk_size: int | None) -> tf.Tensor:
    """Per-token exact loss ``[N]`` for float32 ``x [N, D]``, ``w [V, D]`` and valid ``labels [N]``:
    dense logits, or vocabulary chunks of ``chunk_size``."""
    if chunk_size is None or chunk_size >= int(w.shape[0]):
        return _kernel.token_losses(x, w, labels, eta, eps, DenseColumns.shifted)
    return _kernel.token_losses(
        x, w, labels, eta, eps, lambda w, origin: VocabChunks(w, origin, chunk_size)
    )


def fused_weighted_loss(x, w, labels, weights, eta, eps: float, chunk_size: int) -> tf.Tensor:
    """``sum_n weights_n * loss_n`` with gradients computed during the forward pass.

    Token chunks of ``rows = N * chunk_size // V`` hold ``[rows, V]`` logits (never more than
    ``[N, chunk_size]`` elements); each chunk's full rows give exact probabilities at once, so
    the kernel's backward half runs right after its forward half, with the weights as the
    upstream. The backward pass only scales the sums by the upstream scalar."""
    n, dim = int(x.shape[0]), int(x.shape[1])
    rows, num_chunks = _fused_rows(n, int(w.shape[0]), chunk_size)
    learn_eta = isinstance(eta, tf.Tensor)

    def split(t):  # [N, ...] -> [num_chunks, rows, ...], zero-padded
        padded = tf.pad(t, [[0, num_chunks * rows - n]] + [[0, 0]] * (t.shape.rank - 1))
        return tf.reshape(padded, [num_chunks, rows, *t.shape[1:]])

    def loss_fn(x, w, e):
        origin = reference_point(x)
        x = x - origin
        columns = DenseColumns(w - origin)
        xs, ys, gs = split(x), split(labels), split(weights)

        def body(i, total, d_eta, dw, dx_parts):
            xc, yc, gc = xs[i], ys[i], gs[i]
            forward = _kernel.token_forward(columns, xc, w, yc, origin, e, eps)
            # Zero-weight rows (ignored, padding) must not turn 0 * inf into NaN.
            total += tf.reduce_sum(tf.where(gc == 0.0, 0.0, gc * forward[2]))
            # The center gradient is added in place: a separate sum would be a second [V, D].
            dxc, dw, d_eta_c = _kernel.token_backward(columns, forward, xc, yc, gc, e, eps, dw)
            d_eta = d_eta + d_eta_c if learn_eta else d_eta
            return total, d_eta, dw, dx_parts.write(i, dxc)

        parts = tf.TensorArray(tf.float32, size=num_chunks, element_shape=[rows, dim])
        zero = tf.constant(0.0)
        init = (zero, zero, tf.zeros_like(w), parts)
        total, d_eta, dw, dx_parts = _kernel.loop(num_chunks, body, init)
        dx = tf.reshape(dx_parts.stack(), [-1, dim])[:n]

        def grad(upstream):
            scale = tf.cast(upstream, tf.float32)
            return scale * dx, scale * dw, scale * d_eta if learn_eta else None

        return total, grad

    return _kernel.with_eta(loss_fn, x, w, eta)


def _true_column(labels: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    return tf.equal(ids[None, :], labels[:, None])


class DenseColumns:
    """All other classes at once: ``[N, V]`` logits, the true column at ``-inf``."""

    def __init__(self, w: tf.Tensor):
        self.w = w  # [V, D], measured from the reference point
        self.w_sq = tf.reduce_sum(tf.square(w), axis=-1)

    @classmethod
    def shifted(cls, w: tf.Tensor, origin: tf.Tensor) -> DenseColumns:
        return cls(w - origin)

    def forward(self, x, labels, eta, eps):
        z = logits_from_sq(expanded_sq_distances(x, self.w, None, self.w_sq), eta, eps)
        z = tf.where(_true_column(labels, tf.range(tf.shape(self.w)[0])), -float("inf"), z)
        return tf.reduce_logsumexp(z, axis=-1), z

    def backward(self, z, x, labels, lse, g, eta, eps, true, dw=None):
        c = _kernel.coefficients(z, lse, g, eta, eps)
        center = _kernel.center_grad(c, x, self.w)
        other_l = _kernel.expected_l(z, lse, eta) if isinstance(eta, tf.Tensor) else None
        dense = center if dw is None else dw + center
        return _kernel.hidden_grad(c, x, self.w), _kernel.CenterGrad(dense=dense), other_l


def exact_matmul_flops(num_tokens: int, vocab_size: int, dim: int) -> float:
    """FLOPs of the exact loss's matmuls in one forward+backward: the 3 ``[N, V, D]`` products
    cross-entropy needs too (the two-pass path adds a 4th, the distances again)."""
    return 6.0 * num_tokens * vocab_size * dim


def num_chunks_of(vocab_size: int, chunk_size: int) -> int:
    """Chunks of ``chunk_size`` rows that cover ``vocab_size`` (the last one may overlap)."""
    return -(-vocab_size // chunk_size)


def vocab_chunk(w: tf.Tensor, origin: tf.Tensor, i: tf.Tensor, chunk_size: int):
    """Chunk ``i`` of the centers, shifted by ``origin``, sliced without a padded copy: rows
    ``[start, start + C)`` with ``start = min(i C, V - C)``, so the last chunk overlaps the one
    before. Returns the rows ``[C, D]``, their squared norms, class ids ``[C]``, and whether each
    id is new to this chunk (not counted before)."""
    vocab_size = int(w.shape[0])
    start = tf.minimum(i * chunk_size, vocab_size - chunk_size)
    ids = start + tf.range(chunk_size)
    # A gather, not a dynamic slice: XLA:CPU padded the whole operand for the slice.
    w_c = tf.gather(w, ids) - origin
    return w_c, tf.reduce_sum(tf.square(w_c), axis=-1), ids, ids >= i * chunk_size


class VocabChunks:
    """The other classes ``chunk_size`` at a time: a running log-sum-exp forward, each chunk's
    distances recomputed in the backward pass (no shifted or padded ``[V, D]`` copy; the
    center gradient added in place into one ``[V, D]`` buffer, the output)."""

    def __init__(self, w: tf.Tensor, origin: tf.Tensor, chunk_size: int):
        self.w, self.origin, self.chunk_size = w, origin, chunk_size
        self.num_chunks = num_chunks_of(int(w.shape[0]), chunk_size)

    def _logits(self, x, x_sq, labels, i, eta, eps):
        """``[N, C]`` logits of chunk ``i``, the true class and ids of earlier chunks at -inf,
        with the chunk's distances, rows and ids."""
        w_c, w_sq, ids, fresh = vocab_chunk(self.w, self.origin, i, self.chunk_size)
        d2 = expanded_sq_distances(x, w_c, x_sq, w_sq)
        keep = tf.logical_and(tf.logical_not(_true_column(labels, ids)), fresh[None, :])
        return tf.where(keep, logits_from_sq(d2, eta, eps), -float("inf")), d2, w_c, ids

    def forward(self, x, labels, eta, eps):
        x_sq = tf.reduce_sum(tf.square(x), axis=-1)

        def body(i, running_max, running_sum):
            z, *_ = self._logits(x, x_sq, labels, i, eta, eps)
            new_max = tf.maximum(running_max, tf.reduce_max(z, axis=-1))
            running_sum = running_sum * tf.exp(running_max - new_max) + tf.reduce_sum(
                tf.exp(z - new_max[:, None]), axis=-1
            )
            return new_max, running_sum

        # A finite start: a chunk holding only the true class must not give inf - inf.
        lowest = tf.fill(tf.shape(x_sq), tf.float32.min)
        m, s = _kernel.loop(self.num_chunks, body, (lowest, tf.zeros_like(x_sq)))
        return m + tf.math.log(s), None

    def backward(self, saved, x, labels, lse, g, eta, eps, true, dw=None):
        learn_eta = isinstance(eta, tf.Tensor)
        x_sq = tf.reduce_sum(tf.square(x), axis=-1)

        def body(i, dx, other_l, dw):
            z, d2, w_c, ids = self._logits(x, x_sq, labels, i, eta, eps)
            c = _kernel.coefficients(z, lse, g, eta, eps, d2)
            if learn_eta:
                other_l += _kernel.expected_l(z, lse, eta)
            # Rows seen in an earlier chunk have c = 0 here, so adding leaves them as they were.
            dw = tf.tensor_scatter_nd_add(dw, ids[:, None], _kernel.center_grad(c, x, w_c))
            return dx + _kernel.hidden_grad(c, x, w_c), other_l, dw

        dw = tf.zeros_like(self.w) if dw is None else dw
        dx, other_l, dw = _kernel.loop(
            self.num_chunks, body, (tf.zeros_like(x), tf.zeros_like(lse), dw)
        )
        return dx, _kernel.CenterGrad(dense=dw), other_l if learn_eta else None


def loss_from_logits(logits: tf.Tensor, labels: tf.Tensor, ignore_index=-100) -> tf.Tensor:
    """Per-token ``logsumexp(z) - z_y`` ``[...]`` from full logits ``[..., V]`` and int labels
    ``[...]``: 0 where ignored, NaN where a label is outside ``[0, V)``.

    Examples:
      >>> print(loss_from_logits(tf.zeros([1, 4]), tf.constant([2])).numpy().round(4))
      [1.3863]
    """
    logits = tf.cast(logits, tf.float32)
    vocab = tf.shape(logits)[-1]
    safe, ignored, invalid = inputs.checked_labels(labels, vocab, ignore_index)
    true = tf.gather(logits, safe, batch_dims=safe.shape.rank)
    is_true = tf.one_hot(safe, vocab, on_value=True, off_value=False)
    others = tf.where(is_true, -float("inf"), logits)
    _, losses = _kernel.margin_loss(tf.reduce_logsumexp(others, axis=-1), true)
    losses = tf.where(invalid, float("nan"), losses)
    return tf.where(ignored, tf.zeros_like(losses), losses)
