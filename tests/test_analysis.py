"""The analysis functions against float64 NumPy: nearest k centers, distance as confidence,
explained variance and principal components; chunked, eagerly and under XLA, without an
[N, V] buffer at a large V."""

import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from conftest import f32_buffer_sizes, maybe_jit


def _problem(rng, n=37, d=6, v=301):
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(v, d)).astype(np.float32)
    w[7] = w[3]  # a tie: the lower id must win
    x[0] = w[3] + 1e-3
    return x, w


def _d64(x, w):
    return np.sqrt(((x[:, None, :].astype(np.float64) - w[None].astype(np.float64)) ** 2).sum(-1))


@pytest.mark.parametrize("mode", ["eager", "xla"])
@pytest.mark.parametrize("chunk_size", [16, 64, 301, 4096])
def test_nearest_k_matches_float64(rng, mode, chunk_size):
    x, w = _problem(rng)
    k = 5
    near = maybe_jit(lambda a, b: ht.nearest_k(a, b, k, chunk_size), mode)(x, w)
    d = _d64(x, w)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]  # stable: lower id first on ties
    np.testing.assert_array_equal(near.ids.numpy(), order)
    np.testing.assert_allclose(
        near.distances.numpy(), np.take_along_axis(d, order, 1), rtol=1e-4, atol=1e-4
    )
    assert near.ids[0, 0] == 3 and near.ids[0, 1] == 7


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_confidence_matches_float64(rng, mode):
    x, w = _problem(rng)
    eta = 12.0
    conf = maybe_jit(lambda a, b: ht.harmonic_confidence(a, b, eta, chunk_size=50), mode)(x, w)
    d = _d64(x, w)
    z = -(eta / 2) * np.log(d**2 + 1e-9)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_array_equal(conf.id.numpy(), d.argmin(1))
    np.testing.assert_allclose(conf.distance.numpy(), d.min(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conf.probability.numpy(), p.max(1), rtol=1e-4, atol=1e-6)
    probs = tf.nn.softmax(ht.harmonic_logits(x, w, eta)).numpy().max(1)
    np.testing.assert_allclose(conf.probability.numpy(), probs, rtol=1e-4)


def test_nearest_centers_is_the_first_of_nearest_k(rng):
    x, w = _problem(rng)
    np.testing.assert_array_equal(ht.nearest_centers(x, w, 32), ht.nearest_k(x, w, 1, 32).ids[:, 0])
    np.testing.assert_array_equal(ht.nearest_centers(x, w), _d64(x, w).argmin(1))


def test_explained_variance_and_principal_components_match_numpy(rng):
    m = rng.normal(size=(40, 6)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1, 0.1])
    centered = m - m.mean(0)
    s = np.linalg.svd(centered, compute_uv=False)
    np.testing.assert_allclose(ht.explained_variance(m, 3), (s**2 / (s**2).sum())[:3], rtol=1e-9)
    coords = ht.principal_components(m, 2).numpy()
    _, _, vt = np.linalg.svd(centered)
    ref = centered @ vt[:2].T
    np.testing.assert_allclose(np.abs(coords), np.abs(ref), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="num_components"):
        ht.explained_variance(m, 7)


def test_head_nearest_and_confidence_read_its_centers(rng):
    import keras

    x, w = _problem(rng, v=50)
    head = ht.HarmonicLMHead(50, eta=8.0)
    head.build((None, 6))
    head.centers_variable.assign(w)
    np.testing.assert_array_equal(head.nearest(x, 3).ids, ht.nearest_k(x, w, 3).ids)
    np.testing.assert_allclose(
        head.confidence(x).probability, ht.harmonic_confidence(x, w, 8.0).probability, rtol=1e-6
    )
    assert isinstance(head, keras.layers.Layer)


def test_chunked_analysis_never_builds_tokens_by_vocab():
    # At V = 65,536 an [N, V] float32 buffer is 64 MB; the compiled functions' largest buffer
    # must stay at the [N, chunk] scale (the dense nearest_centers shows the check can fail).
    n, d, v, chunk = 256, 16, 65_536, 2048
    x = tf.random.stateless_normal([n, d], seed=[0, 1])
    w = tf.random.stateless_normal([v, d], seed=[0, 2])

    def largest(fn):
        hlo = tf.function(fn, jit_compile=True).experimental_get_compiler_ir(x, w)(stage="hlo")
        return max(f32_buffer_sizes(hlo))

    assert largest(lambda a, b: ht.nearest_k(a, b, 4, chunk).distances) < n * v
    assert (
        largest(lambda a, b: ht.harmonic_confidence(a, b, 8.0, chunk_size=chunk).probability)
        < n * v
    )
    assert largest(lambda a, b: ht.nearest_centers(a, b, None)) >= n * v
