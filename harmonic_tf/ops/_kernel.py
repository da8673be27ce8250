"""The one custom-gradient kernel: every loss path's forward and backward sequence, written once.

Per token, with logits ``z_i = -(eta/2) log(d_i^2 + eps)`` (minus a logQ term for sampled
columns) and ``p = softmax(z)``, the loss ``lse(z) - z_y`` is computed as
``softplus(lse_other - z_y)`` (``lse - z_y`` cancels when the loss is tiny and the logits are
large), and has ``c_i = dL/d(d_i^2) = (p_i - [i=y]) * (-(eta/2)) / (d_i^2 + eps)``, so
``dL/dx = 2 sum_i c_i (x - w_i)``, ``dL/dw_i = -2 sum_n c_ni (x_n - w_i)`` and
``dL/deta = sum_i (p_i - [i=y]) l_i`` with ``l_i = -(1/2) log(d_i^2 + eps)``.

The kernel owns the true class (from the explicit difference ``x - w_y``, with
``1 - p_y = sigmoid(margin)``) and the reference point every distance is measured from. A path
supplies the *other* classes as a :class:`Columns` object (dense logits, vocabulary chunks,
token chunks, sampled candidates): their log-sum-exp, and in the backward pass their share of
``dL/dx``, ``dL/dw`` and ``dL/deta``. Their terms go through matmuls, so no ``[N, V, D]``
tensor exists.

The cosine distance is this math on unit vectors: the paths normalise the hidden states and
the table before the kernel (autodiff takes the gradient through it), or, for sparse center
gradients, normalise the rows where they are gathered (``unit_centers``), and
:class:`CenterGrad` takes those rows' gradients through their normalisation.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol

import tensorflow as tf

from harmonic_tf.ops.cosine import gathered_rows, unit_rows_grad
from harmonic_tf.ops.distances import log_distances, logits_from_sq, reference_point


class TrueClass(NamedTuple):
    """The true class of each token: ``d2 [N]``, ``diff = x - w_y [N, D]``, logit ``z [N]``."""

    d2: tf.Tensor
    diff: tf.Tensor
    z: tf.Tensor


@dataclasses.dataclass
class CenterGrad:
    """The other classes' share of ``dL/dw``: a dense ``[V, D]`` tensor, sparse rows
    (``values``, ``indices``), or both (the rows added into the dense tensor);
    ``includes_true``: it already holds the true classes' term; ``unit_of``: the raw ``[V, D]``
    table whose sparse rows were normalised when read (cosine): the rows' gradients are then
    taken through the normalisation, row by row, so they stay sparse."""

    dense: tf.Tensor | None = None
    shape: tf.Tensor | None = None  # [V, D] of the sparse form
    values: list = dataclasses.field(default_factory=list)
    indices: list = dataclasses.field(default_factory=list)
    as_slices: bool = False
    includes_true: bool = False
    unit_of: tf.Tensor | None = None

    def with_true_pull(self, labels: tf.Tensor, pull: tf.Tensor) -> tf.Tensor:
        """The whole center gradient: this share plus ``-pull`` at the label rows."""
        if self.includes_true:
            return self.dense
        values = tf.concat([-pull, *self.values], 0)
        indices = tf.concat([labels, *self.indices], 0)
        if self.unit_of is not None:
            values = unit_rows_grad(tf.gather(self.unit_of, indices), values)
        if self.dense is not None:
            return tf.tensor_scatter_nd_add(self.dense, indices[:, None], values)
        if self.as_slices:
            return tf.IndexedSlices(values, indices, self.shape)
        return tf.scatter_nd(indices[:, None], values, self.shape)


class Columns(Protocol):
    """A path's other classes. ``x`` and the centers it reads are measured from the kernel's
    reference point; logits at ``-inf`` (the true class, masked candidates) count for nothing."""

    def forward(self, x: tf.Tensor, labels: tf.Tensor, eta, eps: float):
        """``(lse_other [N], saved)``: the log-sum-exp over the other classes and whatever
        :meth:`backward` needs again."""

    def backward(self, saved, x, labels, lse, g, eta, eps: float, true: TrueClass, dw=None):
        """``(dx [N, D], CenterGrad, other_l [N] or None)`` for per-token upstream ``g``:
        ``other_l = sum_i p_i l_i`` is computed when ``eta`` is a tensor (a learned
        exponent); ``dw``: a dense ``[V, D]`` accumulator to add into, if any."""


def true_class(x, w, labels, origin, eta, eps: float, log_q=0.0, unit=False) -> TrueClass:
    """Exact true-class terms for ``x`` measured from ``origin`` and unshifted ``w [V, D]``
    (``origin=None``: ``w`` is already shifted; ``unit``: its rows normalised when read)."""
    w_y = gathered_rows(w, labels, unit)
    diff = x - (w_y if origin is None else w_y - origin)
    d2 = tf.reduce_sum(tf.square(diff), axis=-1)
    return TrueClass(d2, diff, logits_from_sq(d2, eta, eps) - log_q)


def margin_loss(lse_other: tf.Tensor, z_true: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(margin, loss)`` with ``margin = lse_other - z_y`` and ``loss = softplus(margin)``."""
    margin = lse_other - z_true
    return margin, tf.math.softplus(margin)


def token_forward(
    columns: Columns, x, w, labels, origin, eta, eps: float, log_q_true=0.0, unit=False
):
    """The forward half: ``(true, margin, loss [N], saved)``."""
    true = true_class(x, w, labels, origin, eta, eps, log_q_true, unit)
    lse_other, saved = columns.forward(x, labels, eta, eps)
    margin, loss = margin_loss(lse_other, true.z)
    return true, margin, loss, saved


def token_backward(columns: Columns, forward, x, labels, g, eta, eps: float, dw=None):
    """The backward half for per-token upstream ``g [N]``: ``(dx, center_grad, d_eta)``;
    ``d_eta`` is ``None`` unless ``eta`` is a tensor."""
    true, margin, loss, saved = forward
    lse = true.z + loss
    pull = true_pull(tf.math.sigmoid(margin), true.d2, true.diff, g, eta, eps)
    dx, center, other_l = columns.backward(saved, x, labels, lse, g, eta, eps, true, dw)
    d_eta = None
    if isinstance(eta, tf.Tensor):
        d_eta = tf.reduce_sum(g * other_l) - true_eta_term(margin, true.d2, g, eps)
    return dx + pull, center.with_true_pull(labels, pull), d_eta


def token_losses(
    x, w, labels, eta, eps: float, make_columns, log_q_true=0.0, unit_centers=False
) -> tf.Tensor:
    """Per-token losses ``[N]`` of float32 ``x [N, D]``, ``w [V, D]``, valid ``labels [N]``,
    with the hand-written gradient; ``make_columns(w, origin) -> Columns``; ``unit_centers``:
    the rows of ``w`` are normalised where they are read (the columns must do the same)."""

    def loss_fn(x, w, e):
        origin = reference_point(x)
        x = x - origin
        columns = make_columns(w, origin)
        forward = token_forward(columns, x, w, labels, origin, e, eps, log_q_true, unit_centers)

        def grad(upstream):
            g = tf.cast(upstream, tf.float32)
            return token_backward(columns, forward, x, labels, g, e, eps)

        return forward[2], grad

    return with_eta(loss_fn, x, w, eta)


def with_eta(fn, x: tf.Tensor, w: tf.Tensor, eta):
    """``fn(x, w, eta) -> (loss, grad)`` with ``grad(upstream) -> (dx, dw, d_eta)``, under
    ``tf.custom_gradient``. A tensor ``eta`` (a learned exponent) is an input, so ``d_eta``
    reaches it (a tensor captured by the closure would get no gradient, silently); a number
    stays a Python constant of the traced math, and ``d_eta`` is ``None`` for it."""
    learn = isinstance(eta, tf.Tensor)

    @tf.custom_gradient
    def call(x, w, eta_in):
        return fn(x, w, eta_in if learn else eta)

    return call(x, w, eta if learn else tf.constant(0.0))


def loop(num: int, body, init: tuple) -> tuple:
    """``state = body(i, *state)`` for ``i`` in ``range(num)``: one ``tf.while_loop`` with
    ``maximum_iterations`` (XLA needs it to differentiate through; a loop of its own per pass,
    so XLA cannot merge a backward recomputation with the forward one)."""
    out = tf.while_loop(
        lambda i, *_: i < num,
        lambda i, *state: (i + 1, *body(i, *state)),
        (tf.constant(0), *init),
        maximum_iterations=num,
    )
    return tuple(out[1:])


def coefficients(z, lse, g, eta, eps: float, d2=None) -> tf.Tensor:
    """``c = -(eta/2) p / (d2 + eps)`` for the other classes' logits ``z`` (``[N, M]``), times
    the per-token upstream ``g [N]``; columns at -inf give 0.

    Without ``d2`` the logits must be unbiased (``z = -(eta/2) log(d2 + eps)``):
    ``1 / (d2 + eps) = exp(-2 z / eta)``, so the ``[N, M]`` distances need not be kept."""
    if d2 is None:
        return -0.5 * eta * tf.exp(z * (1.0 + 2.0 / eta) - lse[:, None]) * g[:, None]
    return -0.5 * eta * tf.exp(z - lse[:, None]) / (d2 + eps) * g[:, None]


def hidden_grad(c: tf.Tensor, x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``[N, D]``: ``2 sum_i c_ni (x_n - w_i)`` for ``c [N, M]`` over centers ``w [M, D]``
    (shared) or ``[N, M, D]`` (per token)."""
    if w.shape.rank == 3:
        return 2.0 * tf.reduce_sum(c, 1)[:, None] * x - 2.0 * tf.einsum("nk,nkd->nd", c, w)
    return 2.0 * tf.reduce_sum(c, axis=1)[:, None] * x - 2.0 * tf.matmul(c, w)


def center_grad(c: tf.Tensor, x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``-2 sum_n c_ni (x_n - w_i)``: ``[M, D]`` for shared centers ``w [M, D]``; one row per
    (token, column) pair, ``[N * M, D]``, for per-token centers ``[N, M, D]``."""
    if w.shape.rank == 3:
        return tf.reshape(2.0 * c[:, :, None] * (w - x[:, None, :]), [-1, w.shape[-1]])
    return 2.0 * tf.reduce_sum(c, axis=0)[:, None] * w - 2.0 * tf.matmul(c, x, transpose_a=True)


def true_pull(weight, d2_true, diff_true, g, eta, eps: float) -> tf.Tensor:
    """``[N, D]``: ``2 weight (eta/2) g / (d2_y + eps) (x - w_y)``. With ``weight = 1 - p_y``
    (``sigmoid(margin)``) it is the true class's term of dL/dx, and its center gradient the
    negative; with ``weight = p_y`` it is the own label's push on its center, the other-class
    formula applied to the label (``-2 c_y (x - w_y)``, ``c_y`` as in :func:`coefficients`)."""
    c_true = weight * (0.5 * eta) / (d2_true + eps) * g
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
