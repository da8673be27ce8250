"""Statistical tests of the samplers (chi-square against their stated distributions)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import harmonic_tf as ht
from harmonic_tf.ops.sampling import RandomStream, get_sampler, search_right

from reference import log_q_numpy

V = 50
DRAWS = 200_000
ALPHA = 1e-4  # a correct sampler fails one run in 10,000


def _counts(ids, v=V):
    return np.bincount(np.asarray(ids).reshape(-1), minlength=v)


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
@pytest.mark.parametrize("jit", [False, True])
def test_sampler_matches_its_distribution(name, jit):
    counts = np.arange(V)[::-1] ** 2 + 1.0
    sampler = get_sampler(counts if name == "unigram" else name, V)
    draw = lambda: sampler.sample([DRAWS], RandomStream(0))  # noqa: E731
    ids = (tf.function(draw, jit_compile=True) if jit else draw)().numpy()
    q = np.exp(log_q_numpy(name, V, counts))
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-9)
    np.testing.assert_allclose(np.exp(sampler.log_prob(tf.range(V)).numpy()), q, rtol=1e-5)
    assert stats.chisquare(_counts(ids), q * DRAWS).pvalue > ALPHA


@pytest.mark.parametrize("v", [1, 2, 7, 8, 1000, 8001])
@pytest.mark.parametrize("jit", [False, True])
def test_search_right_matches_numpy_searchsorted(v, jit):
    rng = np.random.default_rng(v)
    q = rng.random(v) * (rng.random(v) < 0.7)  # runs of zeros: ties in the cdf
    cdf = np.cumsum(q).astype(np.float32)
    # Below, at, between and above every entry.
    u = np.concatenate([cdf, cdf - 1e-3, cdf + 1e-3, [-1.0, 0.0, cdf[-1] + 5.0]])
    u = (
        np.concatenate([u, rng.random(500 + len(u) % 2) * cdf[-1]])
        .astype(np.float32)
        .reshape(-1, 2)
    )
    search = lambda c, x: search_right(c, x)  # noqa: E731
    got = (tf.function(search, jit_compile=True) if jit else search)(
        tf.constant(cdf), tf.constant(u)
    )
    np.testing.assert_array_equal(got.numpy(), np.searchsorted(cdf, u, side="right"))


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
@pytest.mark.parametrize("jit", [False, True])
def test_sample_outside_is_q_restricted_to_the_rest(name, jit):
    counts = np.arange(V)[::-1] ** 2 + 1.0
    counts[7] = 0.0  # an unseen id is never drawn either
    sampler = get_sampler(counts if name == "unigram" else name, V)
    excluded = np.zeros(V, bool)
    excluded[[0, 1, 2, 5, 30]] = True
    draw = lambda: sampler.sample_outside(tf.constant(excluded), DRAWS, RandomStream(1))  # noqa: E731
    ids, log_q, ok = [t.numpy() for t in (tf.function(draw, jit_compile=True) if jit else draw)()]
    q = np.exp(log_q_numpy(name, V, counts))
    if name == "unigram":
        q = counts / counts.sum()
    q = np.where(excluded, 0.0, q)
    q /= q.sum()
    assert ok.all() and not excluded[ids].any()
    np.testing.assert_allclose(np.exp(log_q), q[ids], rtol=1e-4)
    seen = q > 0
    assert stats.chisquare(_counts(ids)[seen], q[seen] * DRAWS).pvalue > ALPHA


@pytest.mark.parametrize("jit", [False, True])
def test_uniform_per_example_never_hits_label_and_is_uniform_over_others(jit):
    labels = tf.constant(np.arange(400) % V, tf.int32)
    draw = lambda: ht.UniformSampler(V).sample_excluding(labels, 500, RandomStream(1))  # noqa: E731
    ids = (tf.function(draw, jit_compile=True) if jit else draw)().numpy()
    assert ids.shape == (400, 500)
    assert not np.any(ids == labels.numpy()[:, None])
    assert ids.min() >= 0 and ids.max() < V
    # For label 0: the other V-1 ids are equally likely.
    rows = ids[labels.numpy() == 0]
    counts = _counts(rows)
    assert counts[0] == 0
    assert stats.chisquare(counts[1:]).pvalue > ALPHA


@pytest.mark.parametrize("name", ["log_uniform", "unigram"])
def test_nonuniform_per_example_resampling_is_renormalised_q(name):
    counts = np.ones(V)
    counts[:5] = 2000.0  # label 0 is frequent: many first-round collisions to resample
    sampler = get_sampler(counts if name == "unigram" else name, V)
    labels = tf.zeros([2000], tf.int32)
    ids = tf.function(lambda: sampler.sample_excluding(labels, 100, RandomStream(2)))().numpy()
    assert not np.any(ids == 0)
    q = np.exp(log_q_numpy(name, V, counts))
    expected = q[1:] / q[1:].sum() * ids.size
    assert stats.chisquare(_counts(ids)[1:], expected).pvalue > ALPHA


def test_unseeded_draws_differ_between_calls():
    f = tf.function(lambda: ht.UniformSampler(1000).sample([64], RandomStream(None)))
    assert not np.array_equal(f().numpy(), f().numpy())


def test_unigram_zero_counts_never_drawn():
    counts = np.zeros(V)
    counts[[3, 7]] = [1.0, 3.0]
    ids = ht.UnigramSampler(counts).sample([10_000], RandomStream(0)).numpy()
    assert set(np.unique(ids)) == {3, 7}
    assert abs((ids == 7).mean() - 0.75) < 0.02


def test_unigram_distortion():
    counts = np.array([1.0, 4.0, 16.0])
    s = ht.UnigramSampler(counts, distortion=0.5)
    np.testing.assert_allclose(np.exp(s.log_prob(tf.range(3)).numpy()), [1 / 7, 2 / 7, 4 / 7])
