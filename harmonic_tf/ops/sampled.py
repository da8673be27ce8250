"""Sampled harmonic loss: the true class plus sampled negatives, on the one kernel.

Per token, over candidates ``C_n = {y_n} ∪ negatives``:
``loss = logsumexp_{j in C_n}(z_j - logQ_j) - (z_y - [all] logQ_y)``, where
``logQ_j = log(expected count of j among the draws)``. Negatives come in two fixed-shape blocks:
per-example ``[N, k]`` (gathered centers ``[N, k, D]``) and shared ``[K]`` (one ``[N, D] x [D, K]``
matmul), the shared block holding sampled ids and/or the batch's distinct labels (logQ 0).
They are the :class:`~harmonic_tf.ops._kernel.Columns` of the kernel
(:mod:`harmonic_tf.ops._kernel`). With center rows the centers' gradient is dense: every
token's exact pull plus ``S`` drawn tokens' full-vocabulary push. Otherwise it touches only the
label and candidate rows, returned as ``tf.IndexedSlices`` or scattered into a dense ``[V, D]``
tensor. What to do is a :class:`~harmonic_tf.SampledOptions`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import tensorflow as tf

from harmonic_tf.ops import _kernel, inputs
from harmonic_tf.ops.cosine import gathered_rows, measured
from harmonic_tf.ops.distances import expanded_sq_distances, logits_from_sq
from harmonic_tf.ops.options import SampledOptions
from harmonic_tf.ops.sampling import RandomStream, get_sampler


def sampled_harmonic_loss(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    labels: tf.Tensor,
    options: SampledOptions | None = None,
    *,
    eta: float | tf.Tensor | None = None,
    eps: float = 1e-9,
    reduction: str = "mean",
    ignore_index: int | None = -100,
    weights: tf.Tensor | None = None,
    sampled_ids: tf.Tensor | None = None,
    seed: int | tf.Tensor | None = None,
    distance: str = "euclidean",
) -> tf.Tensor:
    """Harmonic loss over the true class and sampled negatives (training only: report the
    exact loss for evaluation).

    Args:
      hidden_states: ``[N, D]`` or ``[B, S, D]`` float.
      class_centers: ``[V, D]`` float.
      labels: ``[N]`` or ``[B, S]`` int in ``[0, V)`` or ``ignore_index``.
      options: the estimator, a :class:`~harmonic_tf.SampledOptions` (``None``: the measured
        defaults).
      eta, eps, reduction, ignore_index, weights: as in :func:`harmonic_loss`; a tensor ``eta``
        gets the sampled estimate of its gradient (the candidates' probabilities for the
        softmax's).
      sampled_ids: caller-given draws, ``[k]`` (shared) or ``[N, k]`` (per example).
      seed: an int or an int ``[2]`` tensor: the same seed gives the same draws (eagerly, in
        graph mode and under XLA alike); ``None`` draws fresh ones on every call.
      distance: ``"euclidean"`` or ``"cosine"``. Cosine with sparse center gradients normalises
        only the rows it gathers (the gradients stay label and candidate rows); with
        ``center_gradient="rows"``, whose push reads every center, the whole table.

    Returns:
      float32 scalar, or per-token losses in the labels' shape for ``reduction="none"``.

    Examples:
      >>> x = tf.random.stateless_normal([64, 32], seed=[0, 1])
      >>> w = tf.Variable(tf.random.stateless_normal([1000, 32], seed=[0, 2]))
      >>> y = tf.range(64) * 7
      >>> with tf.GradientTape() as tape:
      ...     loss = sampled_harmonic_loss(x, w, y, SampledOptions(k=128), seed=0)
      >>> grad = tape.gradient(loss, w)
      >>> print(type(grad).__name__, grad.shape)  # dense: exact pulls + 128 tokens' full push
      EagerTensor (1000, 32)
      >>> sparse = SampledOptions(k=128, center_gradient="indexed_slices")
      >>> with tf.GradientTape() as tape:
      ...     loss = sampled_harmonic_loss(x, w, y, sparse, seed=0)
      >>> print(type(tape.gradient(loss, w)).__name__)  # only label and candidate rows
      IndexedSlices
    """
    options = SampledOptions() if options is None else options
    if not isinstance(options, SampledOptions):
        raise TypeError(f"`options` must be a harmonic_tf.SampledOptions, got {options!r}.")
    inputs.check_choice("reduction", reduction, inputs.REDUCTIONS)
    inputs.check_positive("eps", eps)
    inputs.check_distance(distance)
    p = inputs.prepare(hidden_states, class_centers, labels, ignore_index)
    if options.negatives == "per_example":
        inputs.check_int("k", options.k, 1, p.vocab_size - 1)
    eta = inputs.resolve_eta(eta, p.dim, distance)
    rng = RandomStream(seed)
    cand = build_candidates(p, options, rng, sampled_ids)
    center_rows = None
    if options.center_gradient == "rows":
        center_rows = rng.integers([options.center_rows], tf.shape(p.labels)[0])
    # Sparse center gradients read only some rows: those are normalised where gathered.
    unit = distance == "cosine" and center_rows is None
    w = p.w if unit else measured(p.w, distance)

    def columns(w, origin):
        return SampledColumns(
            cand, w, origin, options.center_gradient, center_rows,
            options.center_control_variate, unit,
        )  # fmt: skip

    x = measured(p.x, distance)
    losses = _kernel.token_losses(x, w, cand.labels, eta, eps, columns, cand.log_q_true, unit)
    bad = None if cand.bad_ids is None else tf.logical_and(cand.bad_ids, tf.logical_not(p.ignored))
    return inputs.finish(losses, p, reduction, also_invalid=bad, weights=weights)


def distinct_labels(
    labels: tf.Tensor, valid: tf.Tensor, capacity: int | tf.Tensor, vocab_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The first ``capacity`` distinct valid labels in batch order, in fixed shape:
    ``(ids [m], filled [m])``; unfilled slots hold id 0.

    A label's first position comes from a scatter-min over ``[V]``; no sort: inside a
    jit-compiled Keras train step on XLA:CPU a ``tf.sort`` of the labels cost more than the
    whole step (README, "Training quality")."""
    n = tf.shape(labels)[0]
    positions = tf.range(n)
    safe = tf.where(valid, labels, vocab_size)
    first_pos = tf.tensor_scatter_nd_min(tf.fill([vocab_size + 1], n), safe[:, None], positions)
    first = tf.logical_and(valid, tf.equal(tf.gather(first_pos, safe), positions))
    slot = tf.cumsum(tf.cast(first, tf.int32)) - 1
    # Slot `capacity` collects repeats and overflow; it is cut off below.
    slot = tf.where(tf.logical_and(first, slot < capacity), slot, capacity)
    ids = tf.scatter_nd(slot[:, None], tf.where(slot < capacity, labels, 0), [capacity + 1])
    count = tf.minimum(tf.reduce_sum(tf.cast(first, tf.int32)), capacity)
    return ids[:capacity], tf.range(capacity) < count


def _given_ids(sampled_ids, shape, vocab_size, shape_name):
    """``(ids, bad_rows)``: caller-given draws, checked and clamped, and whether each token's
    draws held an id outside ``[0, V)`` (``[N]``, or a scalar for shared draws)."""
    if sampled_ids is None:
        return None, None
    ids = tf.convert_to_tensor(sampled_ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"`sampled_ids` must be integer ids, got dtype {ids.dtype.name}.")
    if not ids.shape.is_compatible_with(shape):
        raise ValueError(f"`sampled_ids` must have shape {shape_name} = {shape}, got {ids.shape}.")
    ids = tf.cast(ids, tf.int32)
    bad = tf.logical_or(ids < 0, ids >= vocab_size)
    tf.debugging.assert_equal(
        tf.reduce_any(bad), False, message=f"`sampled_ids` must be in [0, {vocab_size})"
    )
    # Clamped into range; rows that saw a bad id get a NaN loss (under XLA no assert runs,
    # and a clamped row must not pass for a real one).
    bad_rows = tf.reduce_any(bad, axis=1) if ids.shape.rank == 2 else tf.reduce_any(bad)
    return tf.where(bad, tf.zeros_like(ids), ids), bad_rows


@dataclasses.dataclass(frozen=True)
class Candidates:
    """The candidate set of one loss call (ids, masks and logQ terms; no gradient flows here).

    Two strata: the batch's distinct labels (in-batch block, each counted once, exactly) and
    sampled draws over the rest of the vocabulary (a draw of an id in the in-batch block is
    dropped), weighted by ``1 / expected count``. The sum over the in-batch ids is exact and
    the sampled one is unbiased for the remainder, whatever the sampler."""

    labels: tf.Tensor  # [N] int32
    remove_accidental_hits: bool
    per_example: tf.Tensor | None = None  # [N, k] ids
    per_example_valid: tf.Tensor | None = None  # [N, k] bool: off for ids in the in-batch block
    shared: tf.Tensor | None = None  # [K] ids: sampled and in-batch columns
    shared_bias: tf.Tensor | None = None  # [K] added to the shared logits: -logQ, or -inf
    log_q_true: tf.Tensor | float = 0.0  # [N] subtracted from the true logit
    log_q_per_example: tf.Tensor | float = 0.0  # [N, k]
    bad_ids: tf.Tensor | None = None  # [N] bool: rows that saw an out-of-range given id
    in_batch_span: tuple | None = None  # (start, stop): the batch labels' shared columns

    def keep(self, ids: tf.Tensor, valid: tf.Tensor | None) -> tf.Tensor:
        """Mask of usable candidate columns for ``ids`` ([N, k] or [K]) as ``[N, cols]``."""
        ids2 = ids if ids.shape.rank == 2 else ids[None, :]
        keep = tf.ones(tf.shape(ids2), tf.bool)
        if self.remove_accidental_hits:
            keep = tf.not_equal(ids2, self.labels[:, None])
        if valid is not None:
            keep = tf.logical_and(keep, valid if valid.shape.rank == 2 else valid[None, :])
        return tf.broadcast_to(keep, [tf.shape(self.labels)[0], tf.shape(ids2)[1]])


def build_candidates(
    p: inputs.Prepared,
    options: SampledOptions,
    rng: RandomStream,
    sampled_ids: tf.Tensor | None = None,
) -> Candidates:
    """Draws (or takes) the negatives and computes their logQ terms and masks.

    Expected count of id j among the draws for token n:
    ``q_j * (k_pe / (1 - q_{y_n}) + K_shared)``: per-example draws exclude the label, so their
    probabilities are renormalised; shared draws are not. With an in-batch block, shared draws
    come from ``q`` restricted to the ids outside it (per-example draws of in-batch ids are
    dropped) and in-batch ids have logQ 0."""
    sampler = get_sampler(options.sampler, p.vocab_size)
    in_batch = _in_batch_block(p, options)
    draws = _draw(p, options, sampler, rng, sampled_ids, in_batch)
    log_q_true, log_q_per_example, log_q_shared = _log_q(p.labels, options, sampler, draws)
    shared, shared_bias, in_batch_span = _shared_block(draws, log_q_shared, in_batch)
    bad_rows = draws.bad_rows
    if bad_rows is not None and bad_rows.shape.rank == 0:
        bad_rows = tf.fill(tf.shape(p.labels), bad_rows)
    return Candidates(
        labels=p.labels,
        remove_accidental_hits=options.remove_accidental_hits,
        per_example=draws.per_example,
        per_example_valid=draws.per_example_valid,
        shared=shared,
        shared_bias=shared_bias,
        log_q_true=log_q_true,
        log_q_per_example=log_q_per_example,
        bad_ids=bad_rows,
        in_batch_span=in_batch_span,
    )


class InBatch(NamedTuple):
    """The batch's first distinct labels: ``ids [m]``, ``filled [m]``, ``member [V]``."""

    ids: tf.Tensor
    filled: tf.Tensor
    member: tf.Tensor


def _in_batch_block(p: inputs.Prepared, options: SampledOptions) -> InBatch | None:
    if options.in_batch_negatives == 0:
        return None
    capacity = options.in_batch_columns(p.num_tokens)
    capacity = tf.shape(p.labels)[0] if capacity is None else capacity
    valid_token = tf.logical_not(tf.logical_or(p.ignored, p.invalid))
    ids, filled = distinct_labels(p.labels, valid_token, capacity, p.vocab_size)
    # Unfilled slots scatter to row V, which is cut off.
    rows = tf.where(filled, ids, p.vocab_size)[:, None]
    member = tf.scatter_nd(rows, tf.ones_like(ids), [p.vocab_size + 1])[: p.vocab_size] > 0
    return InBatch(ids, filled, member)


@dataclasses.dataclass(frozen=True)
class Draws:
    """The sampled negatives of one call (per-example or shared), before the in-batch block."""

    per_example: tf.Tensor | None = None  # [N, k]
    per_example_valid: tf.Tensor | None = None  # [N, k]: off for in-batch ids
    shared: tf.Tensor | None = None  # [k]
    shared_valid: tf.Tensor | None = None  # [k]
    shared_log_q: tf.Tensor | None = None  # [k], when drawn from a restricted q
    bad_rows: tf.Tensor | None = None  # given draws outside [0, V): [N] or a scalar


def _draw(p, options, sampler, rng, sampled_ids, in_batch: InBatch | None) -> Draws:
    k, member = options.k, None if in_batch is None else in_batch.member
    if options.negatives == "per_example":
        ids, bad = _given_ids(sampled_ids, [p.num_tokens, k], p.vocab_size, "[N, k]")
        if ids is None:
            ids = sampler.sample_excluding(p.labels, k, rng)
        valid = None if member is None else tf.logical_not(tf.gather(member, ids))
        return Draws(per_example=ids, per_example_valid=valid, bad_rows=bad)
    if k == 0:
        return Draws()
    ids, bad = _given_ids(sampled_ids, [k], p.vocab_size, "[k]")
    log_q = valid = None
    if ids is None and member is not None:
        ids, log_q, valid = sampler.sample_outside(member, k, rng)
    elif ids is None:
        ids = sampler.sample([k], rng)
    if valid is None and member is not None:
        valid = tf.logical_not(tf.gather(member, ids))
    return Draws(shared=ids, shared_valid=valid, shared_log_q=log_q, bad_rows=bad)


def _log_q(labels, options: SampledOptions, sampler, draws: Draws):
    """``(log_q_true [N] or 0, log_q_per_example [N, k] or 0, log_q_shared [k] or None)``:
    the log expected counts subtracted from the logits."""
    if options.log_q_correction == "none":
        return 0.0, 0.0, None
    log_q_label = sampler.log_prob(labels)
    count = 0.0 if draws.shared is None else float(options.k)
    if draws.per_example is not None:
        count = float(options.k) / -tf.math.expm1(log_q_label) + count
    log_count = tf.math.log(count * tf.ones_like(log_q_label))
    log_q_per_example = log_q_shared = None
    if draws.per_example is not None:
        log_q_per_example = sampler.log_prob(draws.per_example) + log_count[:, None]
    if draws.shared is not None:
        log_q = draws.shared_log_q
        log_q = sampler.log_prob(draws.shared) if log_q is None else log_q
        # Shared draws never share a call with per-example ones: count is k here.
        log_q_shared = log_q + math.log(count)
    log_q_true = log_q_label + log_count if options.log_q_correction == "all" else 0.0
    return log_q_true, 0.0 if log_q_per_example is None else log_q_per_example, log_q_shared


def _shared_block(draws: Draws, log_q_shared, in_batch: InBatch | None):
    """``(ids [K], bias [K], in_batch_span)`` of the shared columns: the draws, then the in-batch
    labels at ``[start, stop)`` (``None`` without them); the bias is ``-logQ`` (0 for in-batch
    ids) or ``-inf`` for unusable columns."""
    shared, valid, span = draws.shared, draws.shared_valid, None
    if in_batch is not None:
        start = 0 if shared is None else _length(shared)
        span = (start, start + _length(in_batch.ids))
        if shared is None:
            shared, valid, log_q_shared = in_batch.ids, in_batch.filled, None
        else:
            shared = tf.concat([shared, in_batch.ids], 0)
            valid = tf.concat([valid, in_batch.filled], 0)
            if log_q_shared is not None:
                log_q_shared = tf.concat([log_q_shared, tf.zeros(tf.shape(in_batch.ids))], 0)
    if shared is None:
        return None, None, None
    bias = tf.zeros(tf.shape(shared)) if log_q_shared is None else -log_q_shared
    if valid is not None:
        bias = tf.where(valid, bias, -float("inf"))
    return shared, _computed_once(bias), span


class Block(NamedTuple):
    """One block of candidate columns: logits ``z``, distances ``d2`` ``[N, M]``, their centers
    ``[M, D]`` or ``[N, M, D]`` (measured from the reference point) and ids."""

    z: tf.Tensor
    d2: tf.Tensor
    w: tf.Tensor
    ids: tf.Tensor


class SampledColumns:
    """The kernel's other classes for the sampled loss: the candidate blocks. The centers'
    gradient is the candidates' sparse rows, or with ``center_rows`` a dense estimate.
    ``unit``: the rows of ``w`` are normalised where gathered (cosine, sparse gradients)."""

    def __init__(
        self, cand: Candidates, w, origin, center_gradient: str, center_rows=None,
        control_variate: bool = False, unit: bool = False,
    ):  # fmt: skip
        self.cand, self.w, self.origin, self.unit = cand, w, origin, unit
        self.center_gradient, self.center_rows = center_gradient, center_rows
        self.control_variate = control_variate and center_rows is not None

    def forward(self, x, labels, eta, eps):
        cand, x_sq = self.cand, tf.reduce_sum(tf.square(x), axis=-1)
        blocks = []
        if cand.per_example is not None:
            keep = cand.keep(cand.per_example, cand.per_example_valid)
            bias = -cand.log_q_per_example
            blocks.append(self._block(x, x_sq, cand.per_example, bias, keep, eta, eps))
        if cand.shared is not None:
            keep = cand.keep(cand.shared, None)
            bias = cand.shared_bias[None, :]
            blocks.append(self._block(x, x_sq, cand.shared, bias, keep, eta, eps))
        lse = tf.reduce_logsumexp(tf.concat([b.z for b in blocks], axis=1), axis=1)
        return lse, blocks

    def _block(self, x, x_sq, ids, bias, keep, eta, eps) -> Block:
        w_b = gathered_rows(self.w, ids, self.unit) - self.origin  # [K, D] or [N, k, D]
        d2 = expanded_sq_distances(x, w_b, x_sq)
        z = tf.where(keep, logits_from_sq(d2, eta, eps) + bias, -float("inf"))
        return Block(z, d2, w_b, ids)

    def backward(self, blocks, x, labels, lse, g, eta, eps, true, dw=None):
        # Without center rows the candidates' center gradient is the estimate.
        moves = self.center_rows is None
        center = _kernel.CenterGrad(
            shape=tf.shape(self.w),
            as_slices=self.center_gradient == "indexed_slices",
            unit_of=self.w if self.unit else None,
        )
        dx, shared, shared_c = 0.0, None, None
        for b in blocks:
            # Masked columns have z = -inf, so their coefficients are 0.
            c = _kernel.coefficients(b.z, lse, g, eta, eps, b.d2)
            if b.ids.shape.rank == 1:  # the shared block ([K] ids; per-example ones are [N, k])
                shared, shared_c = b, c
            dx += _kernel.hidden_grad(c, x, b.w)
            if moves:
                center.values.append(_kernel.center_grad(c, x, b.w))
                center.indices.append(tf.reshape(b.ids, [-1]))
        other_l = None
        if isinstance(eta, tf.Tensor):
            # The candidates' probabilities stand in for the full softmax's.
            other_l = sum(_kernel.expected_l(b.z, lse, eps=eps, d2=b.d2) for b in blocks)
        if self.center_rows is not None:
            center = self._row_center_grad(shared, shared_c, x, labels, lse, g, eta, eps, true)
        return dx, center, other_l

    def _row_center_grad(self, shared: Block, c, x, labels, lse, g, eta, eps, true):
        """The dense centers' gradient from the center rows. With the control variate, every
        token's own-label push (``p_y``) joins its exact pull: that is the kernel's true pull,
        ``1 - p_y``, so only the variate's other updates are added here. ``shared``: the
        shared block (``None``: none) with coefficients ``c``; it holds the in-batch columns."""
        rows, w = self.center_rows, self.w - self.origin
        if not self.control_variate:
            dense = _row_sampled_center_grad(x, w, labels, rows, true, g, eta, eps)
            return _kernel.CenterGrad(dense=dense, includes_true=True)
        in_batch = _in_batch_part(shared, c, self.cand.in_batch_span)
        indices, values = _control_variate_updates(
            in_batch, true, lse, g, eta, eps, rows, labels, x
        )
        push = _row_sampled_push(x, w, rows, g, eta, eps)
        return _kernel.CenterGrad(dense=push, values=values, indices=indices)


def _in_batch_part(block: Block | None, c: tf.Tensor, span: tuple | None):
    """``(coefficients [N, m], centers [m, D], ids [m])`` of the batch's label columns, the
    ``span`` of the shared ``block`` that :func:`_shared_block` put them at (``c``: the block's
    coefficients); ``None`` without them."""
    if span is None or block is None:
        return None
    start, stop = span
    return c[:, start:stop], block.w[start:stop], block.ids[start:stop]


def _control_variate_updates(in_batch, true, lse, g, eta, eps, rows, labels, x):
    """The control variate of the row-sampled push as scatter updates ``(indices, values)``
    beyond every token's own-label push (which the kernel's true pull holds, see
    :meth:`SampledColumns._row_center_grad`): minus the drawn rows' own-label push times
    ``N / S``, and every token's push on the batch's label columns (``in_batch`` from
    :func:`_in_batch_part`, no logQ weight; ``None``: none) minus the drawn rows' times
    ``N / S``. Its expectation over the rows is 0, so the estimate stays unbiased; the rows are
    left to estimate the difference, most of the noise being a token's large push on its own
    label (``p_y``) against its exact pull."""
    scale = _rows_scale(x, rows)
    # Own label's push, p_y from the estimate (the kernel's true_pull with weight p_y).
    p_y = tf.exp(tf.gather(true.z - lse, rows))
    d2_r, g_r, diff_r = (tf.gather(t, rows) for t in (true.d2, g, true.diff))
    own_rows = -_kernel.true_pull(p_y, d2_r, diff_r, g_r * scale, eta, eps)
    indices, values = [tf.gather(labels, rows)], [own_rows]
    if in_batch is not None:
        c, w, ids = in_batch
        c_rows = tf.gather(c, rows) * scale
        push_rows = _kernel.center_grad(c_rows, tf.gather(x, rows), w)
        indices.append(ids)
        values.append(_kernel.center_grad(c, x, w) - push_rows)
    return indices, values


def _length(v: tf.Tensor) -> int | tf.Tensor:
    return v.shape[0] if v.shape[0] is not None else tf.shape(v)[0]


def _computed_once(v: tf.Tensor) -> tf.Tensor:
    """``v`` as a buffer of its own. XLA on the CPU fuses a small vector's concatenation into
    every element of its ``[N, K]`` consumer, which then neither vectorizes nor runs on two
    threads (2x slower; ``tests/test_sampled.py`` checks the HLO). A reduction is not fused
    into its consumer, and ``max(v, -inf)`` is ``v`` (a no-op scatter is simplified away)."""
    return tf.reduce_max(tf.stack([v, tf.fill(tf.shape(v), -float("inf"))], axis=1), axis=1)


def _rows_scale(x: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """``N / S``: the weight of ``S`` rows drawn uniformly, with replacement, from ``N``."""
    return tf.cast(tf.shape(x)[0], tf.float32) / float(rows.shape[0])


def _row_sampled_push(x, w, rows, g, eta, eps):
    """Dense ``[V, D]``: the push ``sum_j p_nj dz_nj/dw_j`` of the drawn tokens over all ``V``
    classes, times ``N / S`` (unbiased: rows are drawn uniformly with replacement). ``x`` and
    ``w`` are measured from the same reference point."""
    x_r, g_r = tf.gather(x, rows), tf.gather(g, rows) * _rows_scale(x, rows)
    z = logits_from_sq(expanded_sq_distances(x_r, w), eta, eps)  # [S, V]
    c = _kernel.coefficients(z, tf.reduce_logsumexp(z, axis=1), g_r, eta, eps)
    return _kernel.center_grad(c, x_r, w)


def _row_sampled_center_grad(x, w, labels, rows, true, g, eta, eps):
    """Dense ``[V, D]`` centers' gradient: every token's exact pull ``-(dz_y/dw_y)`` plus the
    rows' push (:func:`_row_sampled_push`)."""
    push = _row_sampled_push(x, w, rows, g, eta, eps)
    # Every token's exact pull at its label's row with weight 1 (p_y = 0: the push has it).
    pull = -_kernel.true_pull(1.0, true.d2, true.diff, g, eta, eps)
    return tf.tensor_scatter_nd_add(push, labels[:, None], pull)
