"""Sampled harmonic loss: the true class plus sampled negatives, with a hand-written gradient.

Per token, over candidates ``C_n = {y_n} ∪ negatives``:
``loss = logsumexp_{j in C_n}(z_j - logQ_j) - (z_y - [all] logQ_y)``, where
``logQ_j = log(expected count of j among the draws)``. Negatives come in two fixed-shape blocks:
per-example ``[N, k]`` (gathered centers ``[N, k, D]``) and shared ``[K]`` (one ``[N, D] x [D, K]``
matmul), the shared block holding sampled ids and/or the batch's distinct labels (logQ 0).
With center rows the centers' gradient is dense: every token's exact pull plus ``S`` drawn
tokens' full-vocabulary push. Otherwise it touches only the label and candidate rows, returned
as ``tf.IndexedSlices`` or scattered into a dense ``[V, D]`` tensor. What to do is a
:class:`~harmonic_tf.SampledOptions`.
"""

from __future__ import annotations

import dataclasses
import math

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
from harmonic_tf.options import SampledOptions
from harmonic_tf.sampling import RandomStream, get_sampler


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

    Returns:
      float32 scalar, or per-token losses in the labels' shape for ``reduction="none"``.

    Example:
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
    _inputs.check_choice("reduction", reduction, _inputs.REDUCTIONS)
    _inputs.check_positive("eps", eps)
    p = _inputs.prepare(hidden_states, class_centers, labels, ignore_index)
    if options.negatives == "per_example":
        _inputs.check_int("k", options.k, 1, p.vocab_size - 1)
    eta = _inputs.resolve_eta(eta, p.dim)
    rng = RandomStream(seed)
    cand = build_candidates(p, options, rng, sampled_ids)
    center_rows = None
    if options.center_gradient == "rows":
        center_rows = rng.integers([options.center_rows], tf.shape(p.labels)[0])
    losses = sampled_token_losses(p.x, p.w, cand, eta, eps, options.center_gradient, center_rows)
    bad = None if cand.bad_ids is None else tf.logical_and(cand.bad_ids, tf.logical_not(p.ignored))
    return _inputs.finish(losses, p, reduction, also_invalid=bad, weights=weights)


def _in_batch_capacity(in_batch_negatives, num_tokens):
    """The capacity m of the distinct-label block: None (off), or an int or None-for-dynamic."""
    if in_batch_negatives == 0:
        return None
    if in_batch_negatives == "all":
        return num_tokens  # None when the batch size is not static: sized at run time
    # A batch never holds more distinct labels than tokens.
    return min(in_batch_negatives, num_tokens or in_batch_negatives) or None


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
    if sampled_ids is None:
        return None
    ids = tf.convert_to_tensor(sampled_ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"`sampled_ids` must be integer ids, got dtype {ids.dtype.name}.")
    if not ids.shape.is_compatible_with(shape):
        raise ValueError(f"`sampled_ids` must have shape {shape_name} = {shape}, got {ids.shape}.")
    ids = tf.cast(ids, tf.int32)
    if not _inputs.inside_xla():
        tf.debugging.assert_equal(
            tf.reduce_any(tf.logical_or(ids < 0, ids >= vocab_size)),
            False,
            message=f"`sampled_ids` must be in [0, {vocab_size})",
        )
    return ids


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
    shared: tf.Tensor | None = None  # [K] ids: sampled then in-batch columns
    shared_bias: tf.Tensor | None = None  # [K] added to the shared logits: -logQ, or -inf
    log_q_true: tf.Tensor | float = 0.0  # [N] subtracted from the true logit
    log_q_per_example: tf.Tensor | float = 0.0  # [N, k]
    bad_ids: tf.Tensor | None = None  # [N] bool: rows that saw an out-of-range given id

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
    p: _inputs.Prepared,
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
    labels, vocab_size = p.labels, p.vocab_size
    sampler = get_sampler(options.sampler, vocab_size)
    valid_token = tf.logical_not(tf.logical_or(p.ignored, p.invalid))
    bad_rows = None

    def given(shape, shape_name):
        nonlocal bad_rows
        ids = _given_ids(sampled_ids, shape, vocab_size, shape_name)
        if ids is None:
            return None
        # Clamped into range; rows that saw a bad id get a NaN loss (under XLA no assert runs,
        # and a clamped row must not pass for a real one).
        bad = tf.logical_or(ids < 0, ids >= vocab_size)
        if ids.shape.rank == 1:
            bad_rows = tf.fill(tf.shape(labels), tf.reduce_any(bad))
        else:
            bad_rows = tf.reduce_any(bad, axis=1)
        return tf.where(bad, tf.zeros_like(ids), ids)

    in_batch = member = None
    capacity = _in_batch_capacity(options.in_batch_negatives, p.num_tokens)
    if options.in_batch_negatives != 0:
        capacity = tf.shape(labels)[0] if capacity is None else capacity
        in_batch = distinct_labels(labels, valid_token, capacity, vocab_size)
        # Unfilled slots scatter to row V, which is cut off.
        rows = tf.where(in_batch[1], in_batch[0], vocab_size)[:, None]
        member = tf.scatter_nd(rows, tf.ones_like(in_batch[0]), [vocab_size + 1])[:vocab_size] > 0

    k = options.k
    per_example = per_example_valid = shared = shared_valid = log_q_shared = None
    if options.negatives == "per_example":
        per_example = given([p.num_tokens, k], "[N, k]")
        if per_example is None:
            per_example = sampler.sample_excluding(labels, k, rng)
        if member is not None:
            per_example_valid = tf.logical_not(tf.gather(member, per_example))
    elif k > 0:
        shared = given([k], "[k]")
        if shared is None and member is not None:
            shared, log_q_shared, shared_valid = sampler.sample_outside(member, k, rng)
        elif shared is None:
            shared = sampler.sample([k], rng)
        if shared_valid is None and member is not None:
            shared_valid = tf.logical_not(tf.gather(member, shared))

    log_q_true = log_q_per_example = 0.0
    if options.log_q_correction != "none":
        log_q_label = sampler.log_prob(labels)
        draws = 0.0 if shared is None else float(k)
        if per_example is not None:
            draws = float(k) / -tf.math.expm1(log_q_label) + draws
        log_draws = tf.math.log(draws * tf.ones_like(log_q_label))
        if per_example is not None:
            log_q_per_example = sampler.log_prob(per_example) + log_draws[:, None]
        if shared is not None:
            log_q = sampler.log_prob(shared) if log_q_shared is None else log_q_shared
            # Shared draws never share a call with per-example ones: draws is K here.
            log_q_shared = log_q + math.log(draws)
        if options.log_q_correction == "all":
            log_q_true = log_q_label + log_draws
    else:
        log_q_shared = None

    if in_batch is not None:
        if shared is None:
            shared, shared_valid = in_batch
            log_q_shared = None
        else:
            shared = tf.concat([shared, in_batch[0]], 0)
            shared_valid = tf.concat([shared_valid, in_batch[1]], 0)
            if log_q_shared is not None:
                log_q_shared = tf.concat([log_q_shared, tf.zeros(tf.shape(in_batch[0]))], 0)
    shared_bias = None
    if shared is not None:
        bias = tf.zeros(tf.shape(shared)) if log_q_shared is None else -log_q_shared
        if shared_valid is not None:
            bias = tf.where(shared_valid, bias, -float("inf"))
        shared_bias = _computed_once(bias)
    return Candidates(
        labels=labels,
        remove_accidental_hits=options.remove_accidental_hits,
        per_example=per_example,
        per_example_valid=per_example_valid,
        shared=shared,
        shared_bias=shared_bias,
        log_q_true=log_q_true,
        log_q_per_example=log_q_per_example,
        bad_ids=bad_rows,
    )


def sampled_token_losses(
    x: tf.Tensor,
    w: tf.Tensor,
    cand: Candidates,
    eta: float | tf.Tensor,
    eps: float,
    center_gradient: str,
    center_rows: tf.Tensor | None = None,
) -> tf.Tensor:
    """Per-token sampled loss ``[N]`` for float32 ``x [N, D]``, ``w [V, D]``; with
    ``center_rows [S]`` (token positions) the centers' gradient comes from those rows."""
    labels = cand.labels
    neg_inf = -float("inf")
    learn_eta = isinstance(eta, tf.Tensor)

    def _loss(x, w, e):
        # Distances from a point near the data; only the gathered centers are shifted.
        origin = reference_point(x)
        x = x - origin
        d2_true, diff_true = true_sq_distances(x, w, labels, origin)
        z_true = logits_from_sq(d2_true, e, eps) - cand.log_q_true
        x_sq = tf.reduce_sum(tf.square(x), axis=-1)
        columns, dists = [], []
        if cand.per_example is not None:
            w_pe = tf.gather(w, cand.per_example) - origin  # [N, k, D]
            cross = tf.einsum("nd,nkd->nk", x, w_pe)
            d2_pe = tf.maximum(
                x_sq[:, None] - 2.0 * cross + tf.reduce_sum(tf.square(w_pe), -1), 0.0
            )
            z_pe = logits_from_sq(d2_pe, e, eps) - cand.log_q_per_example
            keep_pe = cand.keep(cand.per_example, cand.per_example_valid)
            z_pe = tf.where(keep_pe, z_pe, neg_inf)
            columns.append(z_pe)
            dists.append(d2_pe)
        if cand.shared is not None:
            w_sh = tf.gather(w, cand.shared) - origin  # [K, D]
            d2_sh = expanded_sq_distances(x, w_sh, x_sq)
            z_sh = logits_from_sq(d2_sh, e, eps) + cand.shared_bias[None, :]
            keep_sh = cand.keep(cand.shared, None)
            z_sh = tf.where(keep_sh, z_sh, neg_inf)
            columns.append(z_sh)
            dists.append(d2_sh)
        # softplus(lse_negatives - z_true), not lse - z_true: no cancellation for tiny losses.
        margin = tf.reduce_logsumexp(tf.concat(columns, axis=1), axis=1) - z_true
        loss = tf.math.softplus(margin)
        lse = z_true + loss

        def grad(upstream):
            g = tf.cast(upstream, tf.float32)
            # Masked columns have z = -inf, so their coefficients are 0.
            pull = true_pull(margin, d2_true, diff_true, g, e, eps)
            dx = pull
            # With center rows the candidates' centers gradient is not needed at all.
            candidates_move_centers = center_rows is None
            values, indices = [-pull], [labels]
            if cand.per_example is not None:
                c = coefficients(z_pe, lse, g, e, eps, d2_pe)
                dx += 2.0 * tf.reduce_sum(c, 1)[:, None] * x - 2.0 * tf.einsum(
                    "nk,nkd->nd", c, w_pe
                )
                if candidates_move_centers:
                    dw_pe = 2.0 * c[:, :, None] * (w_pe - x[:, None, :])
                    values.append(tf.reshape(dw_pe, [-1, x.shape[1]]))
                    indices.append(tf.reshape(cand.per_example, [-1]))
            if cand.shared is not None:
                c = coefficients(z_sh, lse, g, e, eps, d2_sh)
                dx += hidden_grad(c, x, w_sh)
                if candidates_move_centers:
                    values.append(center_grad(c, x, w_sh))
                    indices.append(cand.shared)
            d_eta = None
            if learn_eta:
                # The candidates' probabilities stand in for the full softmax's.
                other_l = sum(
                    expected_l(z, lse, eps=eps, d2=d2) for z, d2 in zip(columns, dists, strict=True)
                )
                d_eta = eta_gradient(other_l, margin, d2_true, g, eps)
            if not candidates_move_centers:
                dw = _row_sampled_center_grad(
                    x, w - origin, labels, center_rows, diff_true, d2_true, g, e, eps
                )
                return dx, dw, d_eta
            values, indices = tf.concat(values, 0), tf.concat(indices, 0)
            if center_gradient == "dense":
                dw = tf.tensor_scatter_nd_add(tf.zeros_like(w), indices[:, None], values)
            else:
                dw = tf.IndexedSlices(values, indices, tf.shape(w))
            return dx, dw, d_eta

        return loss, grad

    return custom_gradient_with_eta(_loss, x, w, eta)


def _computed_once(v: tf.Tensor) -> tf.Tensor:
    """``v`` as a buffer of its own. XLA on the CPU fuses a small vector's concatenation into
    every element of its ``[N, K]`` consumer, which then neither vectorizes nor runs on two
    threads (2x slower; ``tests/test_sampled.py`` checks the HLO). A reduction is not fused
    into its consumer, and ``max(v, -inf)`` is ``v`` (a no-op scatter is simplified away)."""
    return tf.reduce_max(tf.stack([v, tf.fill(tf.shape(v), -float("inf"))], axis=1), axis=1)


def _row_sampled_center_grad(x, w, labels, rows, diff_true, d2_true, g, eta, eps):
    """Dense ``[V, D]`` centers' gradient: every token's exact pull ``-(dz_y/dw_y)`` plus the
    push ``sum_j p_nj dz_nj/dw_j`` of the drawn tokens over all ``V`` classes, times ``N / S``
    (unbiased: rows are drawn uniformly with replacement). ``x`` and ``w`` are measured from the
    same reference point."""
    scale = tf.cast(tf.shape(x)[0], tf.float32) / float(rows.shape[0])
    x_r, g_r = tf.gather(x, rows), tf.gather(g, rows) * scale
    z = logits_from_sq(expanded_sq_distances(x_r, w), eta, eps)  # [S, V]
    push = center_grad(coefficients(z, tf.reduce_logsumexp(z, axis=1), g_r, eta, eps), x_r, w)
    # Every token's exact pull: -(true_pull) at its label's row, with p_y = 0 (the push has it).
    pull = -2.0 * (0.5 * eta * g / (d2_true + eps))[:, None] * diff_true
    return tf.tensor_scatter_nd_add(push, labels[:, None], pull)
