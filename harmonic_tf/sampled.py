"""Sampled harmonic loss: the true class plus sampled negatives, with a hand-written gradient.

Per token, over candidates ``C_n = {y_n} ∪ negatives``:
``loss = logsumexp_{j in C_n}(z_j - logQ_j) - (z_y - [all] logQ_y)``, where
``logQ_j = log(expected count of j among the draws)``. Negatives come in two fixed-shape blocks:
per-example ``[N, k]`` (gathered centers ``[N, k, D]``) and shared ``[K]`` (one ``[N, D] x [D, K]``
matmul), the shared block holding sampled ids and/or the batch's distinct labels (logQ 0).
With ``exact_center_rows=S`` the centers' gradient is dense: every token's exact pull plus ``S``
drawn tokens' full-vocabulary push. With ``0`` it touches only the label and candidate rows,
returned as ``tf.IndexedSlices`` or scattered into a dense ``[V, D]`` tensor.
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
    expected_l,
    hidden_grad,
    true_eta_term,
    true_pull,
)
from harmonic_tf.sampling import RandomStream, Sampler, get_sampler

NEGATIVES = ("shared", "per_example")
LOG_Q_CORRECTIONS = ("negatives", "all", "none")
CENTER_GRADIENTS = ("indexed_slices", "dense")


def sampled_harmonic_loss(
    hidden_states: tf.Tensor,
    class_centers: tf.Tensor,
    labels: tf.Tensor,
    k: int = 256,
    eta: float | tf.Tensor | None = None,
    eps: float = 1e-9,
    reduction: str = "mean",
    negatives: str = "shared",
    sampler: str | Sampler = "log_uniform",
    remove_accidental_hits: bool = True,
    log_q_correction: str = "negatives",
    in_batch_negatives: bool | int = 768,
    center_gradient: str = "indexed_slices",
    exact_center_rows: int = 128,
    sampled_ids: tf.Tensor | None = None,
    seed: int | tf.Tensor | None = None,
    ignore_index: int | None = -100,
) -> tf.Tensor:
    """Harmonic loss over the true class and ``k`` sampled negatives (training only).

    Args:
      hidden_states: ``[N, D]`` or ``[B, S, D]`` float.
      class_centers: ``[V, D]`` float.
      labels: ``[N]`` or ``[B, S]`` int in ``[0, V)`` or ``ignore_index``.
      k: negatives per step (``"shared"``) or per token (``"per_example"``, ``1 <= k <= V-1``).
        ``k=0`` is allowed with shared in-batch negatives only.
      eta, eps: as in :func:`harmonic_loss`; a tensor ``eta`` gets the sampled estimate of its
        gradient (the candidates' probabilities in place of the full softmax).
      reduction: ``"mean"`` over non-ignored tokens, ``"sum"`` or ``"none"``.
      negatives: ``"shared"``: one set of ``k`` ids for the whole batch (fast path);
        ``"per_example"``: ``k`` ids per token, none equal to that token's label.
      sampler: ``"log_uniform"`` (ids sorted by frequency), ``"uniform"``, a
        :class:`~harmonic_tf.Sampler`, or a 1-D array of token counts (unigram: measured best).
      remove_accidental_hits: mask negatives equal to the token's own label.
      log_q_correction: ``"negatives"`` subtracts ``log(expected count)`` from the negatives'
        logits so the sampled denominator estimates the full one; ``"all"`` also from the true
        logit (``tf.nn.sampled_softmax_loss``'s convention, biased); ``"none"`` corrects nothing.
      in_batch_negatives: ``True`` adds the batch's distinct labels as shared negatives, each
        once and uncorrected (their part of the denominator is exact); an int ``m`` keeps the
        first ``m`` of them (batch order) in a fixed-shape block, far cheaper than ``N``.
        Shared draws then come from ``q`` restricted to the other ids (per-example draws of
        in-batch ids are dropped), so the draws estimate only the rest. Ignored positions
        never count.
      center_gradient: ``"indexed_slices"`` (rows touched only) or ``"dense"`` (``[V, D]``).
      exact_center_rows: ``S > 0`` estimates the centers' push from ``S`` tokens drawn from
        the batch, each over the full vocabulary and scaled by ``N / S``, plus every token's
        exact pull on its label's center: every center moves every step as in exact training
        (cost ``S x V``; the centers' gradient is dense). ``0``: from the sampled candidates.
      sampled_ids: caller-given negatives, ``[k]`` (shared) or ``[N, k]`` (per example).
      seed: an int or an int ``[2]`` tensor: the same seed gives the same negatives; ``None``
        draws fresh negatives on every call.
      ignore_index: label value whose tokens contribute nothing.

    Returns:
      float32 scalar, or per-token losses in the labels' shape for ``reduction="none"``.

    Example:
    >>> x = tf.random.normal([64, 32]); w = tf.Variable(tf.random.normal([1000, 32]))
    >>> y = tf.random.uniform([64], 0, 1000, tf.int32)
    >>> with tf.GradientTape() as tape:
    ...     loss = sampled_harmonic_loss(x, w, y, k=128, seed=0)
    >>> grad = tape.gradient(loss, w)  # dense: exact pulls + 128 tokens' full-vocabulary push
    """
    _inputs.check_choice("reduction", reduction, _inputs.REDUCTIONS)
    _inputs.check_choice("negatives", negatives, NEGATIVES)
    _inputs.check_choice("log_q_correction", log_q_correction, LOG_Q_CORRECTIONS)
    _inputs.check_choice("center_gradient", center_gradient, CENTER_GRADIENTS)
    _inputs.check_positive("eps", eps)
    if not isinstance(remove_accidental_hits, bool):
        raise TypeError(f"`remove_accidental_hits` must be a bool, got {remove_accidental_hits!r}.")
    p = _inputs.prepare(hidden_states, class_centers, labels, ignore_index)
    eta = _inputs.resolve_eta(eta, p.dim)
    sampler = get_sampler(sampler, p.vocab_size)
    _inputs.check_int("exact_center_rows", exact_center_rows, 0)
    num_in_batch = _check_in_batch(in_batch_negatives, p.num_tokens)
    in_batch_on = num_in_batch is not None or in_batch_negatives is True
    if negatives == "per_example":
        _inputs.check_int("k", k, 1, p.vocab_size - 1)
    else:
        _inputs.check_int("k", k, 0 if in_batch_on else 1)
    rng = RandomStream(seed)
    valid_token = tf.logical_not(tf.logical_or(p.ignored, p.invalid))

    blocks = Candidates(p.labels, remove_accidental_hits)
    if in_batch_on:
        if num_in_batch is None:
            num_in_batch = tf.shape(p.labels)[0]
        blocks.set_in_batch(
            *distinct_labels(p.labels, valid_token, num_in_batch, p.vocab_size), p.vocab_size
        )
    if negatives == "per_example":
        ids = _given_ids(sampled_ids, [p.num_tokens, k], p, "[N, k]")
        if ids is None:
            ids = sampler.sample_excluding(p.labels, k, rng)
        else:
            ids = blocks.mark_bad_ids(ids, p.vocab_size)
        blocks.per_example = ids
    elif k > 0:
        ids = _given_ids(sampled_ids, [k], p, "[k]")
        if ids is not None:
            blocks.shared = blocks.mark_bad_ids(ids, p.vocab_size)
        elif blocks.in_batch is not None:
            blocks.set_shared_outside(*sampler.sample_outside(blocks.in_batch_member, k, rng))
        else:
            blocks.shared = sampler.sample([k], rng)

    blocks.finalize(sampler, log_q_correction)
    if exact_center_rows:
        blocks.center_rows = rng.integers([exact_center_rows], tf.shape(p.labels)[0])
    losses = sampled_token_losses(p.x, p.w, blocks, eta, eps, center_gradient)
    if blocks.bad_ids is not None:
        p.invalid = tf.logical_or(
            p.invalid, tf.logical_and(blocks.bad_ids, tf.logical_not(p.ignored))
        )
    return _inputs.finish(losses, p, reduction)


def _check_in_batch(in_batch_negatives, num_tokens):
    """Returns None (off) or the capacity m of the distinct-label block."""
    if in_batch_negatives is False:
        return None
    if in_batch_negatives is True:
        return num_tokens  # None when the batch size is not static: sized at run time
    _inputs.check_int("in_batch_negatives", in_batch_negatives, 0)
    # A batch never holds more distinct labels than tokens.
    return min(in_batch_negatives, num_tokens or in_batch_negatives) or None


def distinct_labels(
    labels: tf.Tensor, valid: tf.Tensor, capacity: int | tf.Tensor, vocab_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The first ``capacity`` distinct valid labels in batch order, in fixed shape:
    ``(ids [m], filled [m])``; unfilled slots hold id 0.

    A label's first position comes from a scatter-min over ``[V]``; no sort: inside a
    jit-compiled Keras train step a 2,048-label ``tf.sort`` took 1.5 s on this CPU."""
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


def _given_ids(sampled_ids, shape, p, shape_name):
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
            tf.reduce_any(tf.logical_or(ids < 0, ids >= p.vocab_size)),
            False,
            message=f"`sampled_ids` must be in [0, {p.vocab_size})",
        )
    return ids


@dataclasses.dataclass
class Candidates:
    """The candidate set of one loss call (ids, masks and logQ terms; no gradient flows here).

    Two strata: the batch's distinct labels (in-batch block, each counted once, exactly) and
    sampled draws over the rest of the vocabulary (a draw of an id in the in-batch block is
    dropped), weighted by ``1 / expected count``. The sum over the in-batch ids is exact and
    the sampled one is unbiased for the remainder, whatever the sampler."""

    labels: tf.Tensor
    remove_accidental_hits: bool
    per_example: tf.Tensor | None = None  # [N, k] ids
    per_example_valid: tf.Tensor | None = None  # [N, k] bool: off for ids in the in-batch block
    shared: tf.Tensor | None = None  # [K] ids; after finalize, sampled then in-batch columns
    shared_valid: tf.Tensor | None = None  # [K] bool
    in_batch: tf.Tensor | None = None  # [m] distinct labels
    in_batch_filled: tf.Tensor | None = None  # [m] bool
    in_batch_member: tf.Tensor | None = None  # [V] bool: id is in the in-batch block
    bad_ids: tf.Tensor | None = None  # [N] bool: rows that saw an out-of-range given id
    log_q_true: tf.Tensor | float = 0.0  # [N] subtracted from the true logit
    log_q_per_example: tf.Tensor | float = 0.0  # [N, k]
    log_q_shared: tf.Tensor | float = 0.0  # [K]
    shared_bias: tf.Tensor | None = None  # [K] added to the shared logits: -logQ, or -inf
    log_q_outside: tf.Tensor | None = None  # [K] log q of shared draws restricted outside
    center_rows: tf.Tensor | None = None  # [S] tokens whose full-vocabulary push moves centers

    def set_in_batch(self, ids: tf.Tensor, filled: tf.Tensor, vocab_size: int) -> None:
        self.in_batch, self.in_batch_filled = ids, filled
        # Unfilled slots scatter to row V, which is cut off.
        rows = tf.where(filled, ids, vocab_size)[:, None]
        counts = tf.scatter_nd(rows, tf.ones_like(ids), [vocab_size + 1])
        self.in_batch_member = counts[:vocab_size] > 0

    def set_shared_outside(self, ids: tf.Tensor, log_q: tf.Tensor, ok: tf.Tensor) -> None:
        """Shared draws from ``q`` restricted to ids outside the in-batch block."""
        self.shared, self.shared_valid, self.log_q_outside = ids, ok, log_q

    def finalize(self, sampler: Sampler, correction: str) -> None:
        """Sets the logQ terms and merges the in-batch block into the shared columns.

        Expected count of id j among the sampled draws for token n:
        ``q_j * (k_pe / (1 - q_{y_n}) + K_shared)``: per-example draws exclude the label, so
        their probabilities are renormalised; shared draws are not. In-batch ids: logQ 0."""
        member = self.in_batch_member
        if member is not None:
            if self.shared is not None and self.log_q_outside is None:
                self.shared_valid = tf.logical_not(tf.gather(member, self.shared))
            if self.per_example is not None:
                self.per_example_valid = tf.logical_not(tf.gather(member, self.per_example))
        if correction != "none":
            log_q_label = sampler.log_prob(self.labels)
            draws = 0.0 if self.shared is None else float(self.shared.shape[0])
            if self.per_example is not None:
                draws = float(self.per_example.shape[1]) / -tf.math.expm1(log_q_label) + draws
            log_draws = tf.math.log(draws * tf.ones_like(log_q_label))
            if self.per_example is not None:
                self.log_q_per_example = sampler.log_prob(self.per_example) + log_draws[:, None]
            if self.shared is not None:
                log_q = self.log_q_outside
                log_q = sampler.log_prob(self.shared) if log_q is None else log_q
                # Shared draws never share a call with per-example ones: draws is K here.
                self.log_q_shared = log_q + math.log(draws)
            if correction == "all":
                self.log_q_true = log_q_label + log_draws
        if self.in_batch is not None:
            if self.shared is None:
                self.shared, self.shared_valid = self.in_batch, self.in_batch_filled
            else:
                self.shared = tf.concat([self.shared, self.in_batch], 0)
                self.shared_valid = tf.concat([self.shared_valid, self.in_batch_filled], 0)
                if correction != "none":
                    m = tf.shape(self.in_batch)[0]
                    self.log_q_shared = tf.concat([self.log_q_shared, tf.zeros([m])], 0)
        if self.shared is not None:
            bias = -self.log_q_shared * tf.ones(tf.shape(self.shared))
            if self.shared_valid is not None:
                bias = tf.where(self.shared_valid, bias, -float("inf"))
            self.shared_bias = _computed_once(bias)

    def keep(self, ids: tf.Tensor, valid: tf.Tensor | None) -> tf.Tensor:
        """Mask of usable candidate columns for ``ids`` ([N, k] or [K]) as ``[N, cols]``."""
        ids2 = ids if ids.shape.rank == 2 else ids[None, :]
        keep = tf.ones(tf.shape(ids2), tf.bool)
        if self.remove_accidental_hits:
            keep = tf.not_equal(ids2, self.labels[:, None])
        if valid is not None:
            keep = tf.logical_and(keep, valid if valid.shape.rank == 2 else valid[None, :])
        return tf.broadcast_to(keep, [tf.shape(self.labels)[0], tf.shape(ids2)[1]])

    def mark_bad_ids(self, ids: tf.Tensor, vocab_size: int) -> tf.Tensor:
        """Clamps given ids into range and remembers which rows saw a bad one (their loss is NaN:
        under XLA no assert runs, and a clamped row must not pass for a real one)."""
        bad = tf.logical_or(ids < 0, ids >= vocab_size)
        rows = (
            tf.reduce_any(bad, axis=1)
            if ids.shape.rank == 2
            else tf.fill(tf.shape(self.labels), tf.reduce_any(bad))
        )
        self.bad_ids = rows if self.bad_ids is None else tf.logical_or(self.bad_ids, rows)
        return tf.where(bad, tf.zeros_like(ids), ids)


def sampled_token_losses(
    x: tf.Tensor,
    w: tf.Tensor,
    cand: Candidates,
    eta: float | tf.Tensor,
    eps: float,
    center_gradient: str,
) -> tf.Tensor:
    """Per-token sampled loss ``[N]`` for float32 ``x [N, D]``, ``w [V, D]``."""
    labels = cand.labels
    neg_inf = -float("inf")
    learn_eta = isinstance(eta, tf.Tensor)

    @tf.custom_gradient
    def _loss(x, w, eta_in):
        e = eta_in if learn_eta else eta
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
            candidates_move_centers = cand.center_rows is None
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
                d_eta = -true_eta_term(margin, d2_true, g, eps)
                for z, d2 in zip(columns, dists, strict=True):
                    d_eta += tf.reduce_sum(g * expected_l(z, lse, eps=eps, d2=d2))
            if not candidates_move_centers:
                dw = _row_sampled_center_grad(x, w - origin, cand, diff_true, d2_true, g, e, eps)
                return dx, dw, d_eta
            values, indices = tf.concat(values, 0), tf.concat(indices, 0)
            if center_gradient == "dense":
                dw = tf.tensor_scatter_nd_add(tf.zeros_like(w), indices[:, None], values)
            else:
                dw = tf.IndexedSlices(values, indices, tf.shape(w))
            return dx, dw, d_eta

        return loss, grad

    return _loss(x, w, eta if learn_eta else tf.constant(0.0))


def _computed_once(v: tf.Tensor) -> tf.Tensor:
    """``v`` as a buffer of its own. XLA on the CPU fuses a small vector's concatenation into
    every element of its ``[N, K]`` consumer, which then neither vectorizes nor runs on two
    threads (forward 13.8 against 6.1 ms, with the backward 22.5 against 15.5, for N=2048,
    K=1024). A reduction is not fused into its consumer, and ``max(v, -inf)`` is ``v`` (a no-op
    scatter, tried first, is simplified away)."""
    return tf.reduce_max(tf.stack([v, tf.fill(tf.shape(v), -float("inf"))], axis=1), axis=1)


def _row_sampled_center_grad(x, w, cand, diff_true, d2_true, g, eta, eps):
    """Dense ``[V, D]`` centers' gradient: every token's exact pull ``-(dz_y/dw_y)`` plus the
    push ``sum_j p_nj dz_nj/dw_j`` of the drawn tokens over all ``V`` classes, times ``N / S``
    (unbiased: rows are drawn uniformly with replacement). ``x`` and ``w`` are measured from the
    same reference point."""
    rows = cand.center_rows
    scale = tf.cast(tf.shape(x)[0], tf.float32) / float(rows.shape[0])
    x_r, g_r = tf.gather(x, rows), tf.gather(g, rows) * scale
    z = logits_from_sq(expanded_sq_distances(x_r, w), eta, eps)  # [S, V]
    push = center_grad(coefficients(z, tf.reduce_logsumexp(z, axis=1), g_r, eta, eps), x_r, w)
    # Every token's exact pull: -(true_pull) at its label's row, with p_y = 0 (the push has it).
    pull = -2.0 * (0.5 * eta * g / (d2_true + eps))[:, None] * diff_true
    return tf.tensor_scatter_nd_add(push, cand.labels[:, None], pull)
