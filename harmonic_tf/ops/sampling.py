"""Negative samplers: fixed-shape, XLA-compatible draws with known probabilities ``q``.

Every sampler draws *with replacement*, so the expected count of id ``j`` in ``K`` draws is
``K * q_j``; that is what the logQ correction subtracts. Each one has ``sample(shape, rng)``
and ``log_prob(ids)``, plus ``sample_excluding(labels, k, rng)`` for per-example negatives.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from harmonic_tf.ops import inputs

# Per-example collision resampling rounds for non-uniform samplers; a collision left after
# them (probability q_y^64) is masked like an accidental hit.
MAX_RESAMPLE_ROUNDS = 64
# Pinned so a seed gives the same draws eagerly, in graph mode and under XLA ("auto_select"
# picks a different algorithm inside XLA).
ALG = "philox"


class RandomStream:
    """Random draws for one loss call: stateful when ``seed`` is None, otherwise stateless and
    reproducible, each draw with its own sub-seed folded from ``seed``."""

    def __init__(self, seed=None):
        if seed is None:
            self._seed = None
        elif isinstance(seed, int) and not isinstance(seed, bool):
            self._seed = tf.constant([seed, 0], tf.int64)
        else:
            seed = tf.convert_to_tensor(seed)
            if not seed.dtype.is_integer or seed.shape != (2,):
                raise ValueError(
                    f"`seed` must be None, an int, or an int tensor of shape [2], got {seed!r}."
                )
            self._seed = tf.cast(seed, tf.int64)
        self._count = 0

    def _next_seed(self) -> tf.Tensor:
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count, alg=ALG)

    def forks(self):
        """``index -> RandomStream`` for loop iterations (``index`` may be a tensor). The parent
        seed is drawn once here: an eager ``tf.while_loop`` runs its body many times."""
        if self._seed is None:
            return lambda index: self
        parent = self._next_seed()
        return lambda index: RandomStream(
            tf.random.experimental.stateless_fold_in(parent, index, alg=ALG)
        )

    def uniform(self, shape) -> tf.Tensor:
        """Floats in ``[0, 1)``."""
        if self._seed is None:
            return tf.random.uniform(shape)
        # XLA turns stateless random bits into floats differently from the TF kernels; integer
        # draws agree everywhere, so build the floats from them.
        bits = tf.random.stateless_uniform(
            shape, seed=self._next_seed(), minval=0, maxval=1 << 24, dtype=tf.int32, alg=ALG
        )
        return tf.cast(bits, tf.float32) * (1.0 / (1 << 24))

    def integers(self, shape, maxval) -> tf.Tensor:
        """int32 in ``[0, maxval)``; ``maxval`` is an int or a scalar int32 tensor."""
        if self._seed is None:
            return tf.random.uniform(shape, 0, maxval, dtype=tf.int32)
        return tf.random.stateless_uniform(
            shape, seed=self._next_seed(), minval=0, maxval=maxval, dtype=tf.int32, alg=ALG
        )


def search_right(cdf: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``tf.searchsorted(cdf, u, side="right")`` for a sorted ``[V]`` ``cdf`` and any-shape ``u``:
    int32 count of entries ``<= u``, by a fixed-depth bisection of ``ceil(log2(V + 1))`` gathers.
    XLA lowers ``tf.searchsorted`` to a ``[len(u), V]`` comparison."""
    v = int(cdf.shape[0])
    lo = tf.zeros(tf.shape(u), tf.int32)
    hi = tf.fill(tf.shape(u), v)
    for _ in range(math.ceil(math.log2(v + 1))):
        # The answer stays in [lo, hi]; once lo == hi nothing moves.
        mid = (lo + hi) // 2
        right = tf.logical_and(mid < hi, tf.gather(cdf, tf.minimum(mid, v - 1)) <= u)
        lo = tf.where(right, mid + 1, lo)
        hi = tf.where(right, hi, mid)
    return lo


class Sampler:
    """Base class: a distribution ``q`` over ``[0, vocab_size)``."""

    name = "sampler"

    def __init__(self, vocab_size: int):
        inputs.check_int("vocab_size", vocab_size, 2)
        self.vocab_size = vocab_size

    def sample(self, shape, rng: RandomStream) -> tf.Tensor:
        raise NotImplementedError

    def log_prob(self, ids: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def sample_excluding(self, labels: tf.Tensor, k: int, rng: RandomStream) -> tf.Tensor:
        """``[N, k]`` draws from ``q`` restricted to ids != ``labels[n]`` (collision resampling)."""
        n = tf.shape(labels)[0]
        draws = self.sample(tf.stack([n, k]), rng)

        stream_for_round = rng.forks()

        def cond(i, d):
            return tf.logical_and(
                i < MAX_RESAMPLE_ROUNDS, tf.reduce_any(tf.equal(d, labels[:, None]))
            )

        def body(i, d):
            fresh = self.sample(tf.stack([n, k]), stream_for_round(i))
            return i + 1, tf.where(tf.equal(d, labels[:, None]), fresh, d)

        _, draws = tf.while_loop(
            cond,
            body,
            (tf.constant(0), draws),
            maximum_iterations=MAX_RESAMPLE_ROUNDS,
        )
        return draws

    def probs(self) -> tf.Tensor:
        """``[V]`` float32 ``q``."""
        return tf.exp(self.log_prob(tf.range(self.vocab_size)))

    def sample_outside(self, excluded: tf.Tensor, k: int, rng: RandomStream):
        """``k`` draws from ``q`` restricted to ids where ``excluded [V]`` is False, and their
        log probabilities under that restriction, and which draws are usable:
        ``(ids [k], log_q [k], ok [k])``.

        One O(V) masked CDF per call; every draw lands outside the excluded set, where an
        unrestricted draw would mostly be wasted on it (the in-batch ids hold most of a
        unigram's mass)."""
        q = tf.where(excluded, 0.0, self.probs())
        cdf = tf.cumsum(q)
        total = cdf[-1]
        u = rng.uniform([k]) * total
        ids = tf.minimum(search_right(cdf, u), self.vocab_size - 1)
        # u * total can round up to total (odds ~2^-24): the clamped id may have q = 0; such a
        # draw is marked unusable rather than given an infinite weight.
        q_ids = tf.gather(q, ids)
        ok = q_ids > 0.0
        log_q = tf.math.log(tf.where(ok, q_ids, 1.0)) - tf.math.log(total)
        return ids, log_q, ok

    def get_config(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class UniformSampler(Sampler):
    """``q_j = 1 / V``."""

    name = "uniform"

    def sample(self, shape, rng: RandomStream) -> tf.Tensor:
        return rng.integers(shape, self.vocab_size)

    def log_prob(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.fill(tf.shape(ids), -math.log(self.vocab_size))

    def sample_excluding(self, labels: tf.Tensor, k: int, rng: RandomStream) -> tf.Tensor:
        # Collision resampling in closed form: a draw from [0, V-1) shifted past the label is
        # uniform over the V-1 other ids, exactly what resampling collisions until none remain
        # gives, in one fixed-shape step.
        r = rng.integers(tf.stack([tf.shape(labels)[0], k]), self.vocab_size - 1)
        return r + tf.cast(r >= labels[:, None], tf.int32)


class LogUniformSampler(Sampler):
    """Zipfian ``q_j = log((j + 2) / (j + 1)) / log(V + 1)``; ids must be sorted by frequency
    (the distribution of ``tf.random.log_uniform_candidate_sampler``)."""

    name = "log_uniform"

    def sample(self, shape, rng: RandomStream) -> tf.Tensor:
        u = rng.uniform(shape)
        ids = tf.cast(tf.floor(tf.exp(u * math.log(self.vocab_size + 1.0))), tf.int32) - 1
        return tf.clip_by_value(ids, 0, self.vocab_size - 1)

    def log_prob(self, ids: tf.Tensor) -> tf.Tensor:
        j = tf.cast(ids, tf.float32)
        return tf.math.log(tf.math.log1p(1.0 / (j + 1.0))) - math.log(
            math.log(self.vocab_size + 1.0)
        )


class UnigramSampler(Sampler):
    """``q_j ∝ counts_j ** distortion`` from user-given token counts (``distortion=0.75`` is
    word2vec's). Draws by inverse CDF (:func:`search_right`)."""

    name = "unigram"

    def __init__(self, counts, distortion: float = 1.0):
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 1 or counts.size < 2:
            raise ValueError(
                f"`counts` must be a 1-D list of >= 2 token counts, got {counts.shape}."
            )
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError("`counts` must be finite and >= 0 (token counts per id).")
        if counts.sum() <= 0:
            raise ValueError("`counts` must not be all zero.")
        inputs.check_positive("distortion", distortion)
        super().__init__(int(counts.size))
        self.counts = counts
        self.distortion = float(distortion)
        q = counts**self.distortion
        q /= q.sum()
        # Ids never seen are never sampled; when one shows up as an in-batch negative its
        # correction uses the smallest seen probability instead of log(0).
        floor = q[q > 0].min()
        self._q = tf.constant(q, tf.float32)
        self._log_q = tf.constant(np.log(np.maximum(q, floor)), tf.float32)
        cdf = np.cumsum(q)
        self._cdf = tf.constant(cdf / cdf[-1], tf.float32)

    def sample(self, shape, rng: RandomStream) -> tf.Tensor:
        return tf.minimum(search_right(self._cdf, rng.uniform(shape)), self.vocab_size - 1)

    def probs(self) -> tf.Tensor:
        return self._q  # zero for unseen ids: they are never drawn

    def log_prob(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self._log_q, ids)

    def get_config(self) -> dict:
        return {"counts": self.counts.tolist(), "distortion": self.distortion}

    def __repr__(self) -> str:
        return f"UnigramSampler(vocab_size={self.vocab_size}, distortion={self.distortion})"


SAMPLERS = {"uniform": UniformSampler, "log_uniform": LogUniformSampler}


def sampler_spec(sampler) -> str | Sampler:
    """Checks a sampler given without its vocabulary size: a name (``"uniform"``,
    ``"log_uniform"``), a :class:`Sampler`, or token counts (a 1-D list/array, or a
    :class:`UnigramSampler` config dict), which become a :class:`UnigramSampler`."""
    if isinstance(sampler, str):
        inputs.check_choice("sampler", sampler, [*SAMPLERS, "<Sampler>", "<token counts>"])
        return sampler
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, dict):
        return UnigramSampler(**sampler)
    if isinstance(sampler, (list, tuple, np.ndarray)):
        return UnigramSampler(sampler)
    raise ValueError(
        "`sampler` must be 'uniform', 'log_uniform', a harmonic_tf.Sampler or a 1-D array of "
        f"token counts, got {sampler!r}."
    )


def get_sampler(sampler, vocab_size: int) -> Sampler:
    """The :class:`Sampler` over ``vocab_size`` ids for anything :func:`sampler_spec` takes."""
    spec = sampler_spec(sampler)
    result = SAMPLERS[spec](vocab_size) if isinstance(spec, str) else spec
    if result.vocab_size != vocab_size:
        raise ValueError(
            f"`sampler` covers {result.vocab_size} ids but `class_centers` has V = {vocab_size} rows."
        )
    return result


def label_counts(labels, vocab_size: int, ignore_index: int | None = -100) -> np.ndarray:
    """``[V]`` float64 count of each class id among ``labels``: the unigram sampler's input
    (``SampledOptions(sampler=label_counts(...))``), for ids not sorted by frequency (a BPE
    tokenizer's).

    ``labels``: an array or tensor of ids, or a ``tf.data.Dataset`` of id batches, ``(x, y)`` or
    ``(x, y, sample_weight)`` tuples (``y`` counted; ``sample_weight`` 0 skips a position).
    Ids equal to ``ignore_index`` are skipped; any other id outside ``[0, V)`` raises.

    Examples:
      >>> label_counts([[1, 1, 3], [0, -100, 1]], vocab_size=4)
      array([1., 3., 0., 1.])
    """
    inputs.check_int("vocab_size", vocab_size, 2)
    counts = np.zeros(vocab_size, np.float64)
    batches = labels.as_numpy_iterator() if isinstance(labels, tf.data.Dataset) else [labels]
    for batch in batches:
        weight = None
        if isinstance(batch, tuple):
            if len(batch) not in (2, 3):
                raise ValueError(
                    "`labels` as a dataset must yield ids, (x, y) or (x, y, sample_weight); got "
                    f"tuples of {len(batch)}."
                )
            weight = batch[2] if len(batch) == 3 else None
            batch = batch[1]
        ids = np.asarray(batch)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"`labels` must hold integer class ids, got dtype {ids.dtype}.")
        keep = np.ones(ids.shape, bool) if ignore_index is None else ids != ignore_index
        if weight is not None:
            keep &= np.broadcast_to(np.asarray(weight) != 0, ids.shape)
        ids = ids[keep]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(
                f"`labels` must be in [0, {vocab_size}) or {ignore_index}, got ids from "
                f"{ids.min()} to {ids.max()}."
            )
        counts += np.bincount(ids.ravel(), minlength=vocab_size)
    return counts
