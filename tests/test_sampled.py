"""Sampled loss with pinned candidates against float64 TF autodiff of the plain formula."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from conftest import PLAIN, maybe_jit
from reference import first_distinct_labels, harmax_numpy, log_q_numpy, sampled_reference

N, D, V, K = 12, 6, 29, 7
NEGATIVES = ["shared", "per_example"]
CORRECTIONS = ["negatives", "all", "none"]
IN_BATCH = [0, "all", 5]
CENTER_GRADIENTS = ["indexed_slices", "dense"]
REDUCTIONS = ["mean", "sum", "none"]


def _data(seed, ignore):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    w = rng.normal(size=(V, D))
    y = rng.integers(0, V, N)
    if ignore:
        y[[2, 7]] = -100
    return x, w, y


def _ids(seed, negatives, y):
    rng = np.random.default_rng(seed + 1)
    if negatives == "shared":
        ids = rng.integers(0, V, K)
        ids[0] = y[y >= 0][0]  # force an accidental hit
        return ids
    return rng.integers(0, V, (N, K))  # hits possible: remove_accidental_hits masks them


def _run_ours(x, w, y, ids, mode, rank3, options, **call):
    # The autodiff reference is the plain sampled formula: candidates only, no center rows.
    def run(xt, wt, yt, idt):
        with tf.GradientTape() as tape:
            tape.watch([xt, wt])
            loss = ht.sampled_harmonic_loss(xt, wt, yt, options, sampled_ids=idt, **call)
            target = tf.reduce_sum(loss)
        gx, gw = tape.gradient(target, [xt, wt])
        return loss, gx, gw

    xs, ys = (x.reshape(3, 4, D), y.reshape(3, 4)) if rank3 else (x, y)
    loss, gx, gw = maybe_jit(run, mode)(
        tf.constant(xs, tf.float32), tf.constant(w, tf.float32), tf.constant(ys), tf.constant(ids)
    )
    return loss, gx, gw


def _reference(
    x, w, y, ids, negatives, in_batch, correction, reduction, sampler="uniform",
    distance="euclidean",
):  # fmt: skip
    capacity = None if in_batch == "all" else in_batch
    in_batch_ids = None if in_batch == 0 else first_distinct_labels(y, capacity)
    return sampled_reference(
        x,
        w,
        y,
        eta=2.5,
        per_example_ids=ids if negatives == "per_example" else None,
        shared_ids=ids if negatives == "shared" else None,
        in_batch_ids=in_batch_ids,
        log_q=log_q_numpy(sampler, V, counts=np.arange(1, V + 1)),
        correction=correction,
        reduction=reduction,
        distance=distance,
    )


def _check(case, mode, distance="euclidean"):
    negatives, correction, in_batch, center_gradient, reduction, ignore, rank3 = case
    seed = 11
    x, w, y = _data(seed, ignore)
    ids = _ids(seed, negatives, y)
    options = PLAIN.replace(
        k=K,
        negatives=negatives,
        log_q_correction=correction,
        in_batch_negatives=in_batch,
        center_gradient=center_gradient,
    )
    loss, gx, gw = _run_ours(
        x, w, y, ids, mode, rank3, options, eta=2.5, reduction=reduction, seed=seed,
        distance=distance,
    )  # fmt: skip
    ref, ref_gx, ref_gw = _reference(
        x, w, y, ids, negatives, in_batch, correction, reduction, distance=distance
    )
    if center_gradient == "indexed_slices":
        assert isinstance(gw, tf.IndexedSlices)
    else:
        assert isinstance(gw, tf.Tensor)
    np.testing.assert_allclose(np.reshape(loss, np.shape(ref)), ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(gx.numpy().reshape(N, D), ref_gx, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(gw).numpy(), ref_gw, rtol=2e-4, atol=2e-6)
    if reduction == "none":
        assert loss.shape == ((3, 4) if rank3 else (N,))


ALL_CASES = list(
    itertools.product(
        NEGATIVES, CORRECTIONS, IN_BATCH, CENTER_GRADIENTS, REDUCTIONS, [False, True], [False, True]
    )
)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: "-".join(map(str, c)))
def test_sampled_matches_autodiff_reference_eager(case):
    _check(case, "eager")


# Under XLA every structural path (negatives x correction x in-batch x gradient form) is compiled;
# reduction, ignore and rank cycle through their values across those cases.
XLA_CASES = [
    (*struct, REDUCTIONS[i % 3], bool(i % 2), bool((i // 2) % 2))
    for i, struct in enumerate(
        itertools.product(NEGATIVES, CORRECTIONS, IN_BATCH, CENTER_GRADIENTS)
    )
]


@pytest.mark.parametrize("case", XLA_CASES, ids=lambda c: "-".join(map(str, c)))
def test_sampled_matches_autodiff_reference_xla(case):
    _check(case, "xla")


# Cosine (rows normalised where gathered, their gradients taken through the normalisation row
# by row): every structure once, eagerly and under XLA.
COSINE_CASES = [
    (*struct, REDUCTIONS[i % 3], bool(i % 2), bool((i // 2) % 2))
    for i, struct in enumerate(
        itertools.product(NEGATIVES, ["negatives"], IN_BATCH, CENTER_GRADIENTS)
    )
]


@pytest.mark.parametrize("mode", ["eager", "xla"])
@pytest.mark.parametrize("case", COSINE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cosine_matches_autodiff_reference(case, mode):
    _check(case, mode, distance="cosine")


@pytest.mark.parametrize("sampler", ["log_uniform", "unigram"])
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_log_q_of_nonuniform_samplers(sampler, negatives):
    x, w, y = _data(5, ignore=True)
    ids = _ids(5, negatives, y)
    spec = np.arange(1, V + 1) if sampler == "unigram" else sampler
    options = PLAIN.replace(k=K, negatives=negatives, sampler=spec, in_batch_negatives="all")
    loss, gx, gw = _run_ours(x, w, y, ids, "graph", False, options, eta=2.5)
    ref, ref_gx, ref_gw = _reference(x, w, y, ids, negatives, "all", "negatives", "mean", sampler)
    np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
    np.testing.assert_allclose(gx.numpy(), ref_gx, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(gw).numpy(), ref_gw, rtol=2e-4, atol=2e-6)


def test_accidental_hits_kept_when_asked():
    x, w, y = _data(3, ignore=False)
    ids = _ids(3, "shared", y)
    options = PLAIN.replace(k=K, remove_accidental_hits=False)
    loss, _, _ = _run_ours(x, w, y, ids, "eager", False, options, eta=2.5)
    ref = sampled_reference(
        x, w, y, 2.5, shared_ids=ids, log_q=log_q_numpy("uniform", V), remove_hits=False
    )[0]
    np.testing.assert_allclose(float(loss), ref, rtol=2e-5)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_indexed_slices_touch_only_label_and_sampled_rows(distance):
    x, w, y = _data(4, ignore=True)
    ids = np.array([3, 3, 9, 20, 21, 22, 23])
    options = PLAIN.replace(k=K)
    _, _, gw = _run_ours(x, w, y, ids, "xla", False, options, eta=2.5, distance=distance)
    assert isinstance(gw, tf.IndexedSlices)
    touched = set(np.unique(gw.indices.numpy()))
    assert touched <= set(ids) | set(y[y >= 0]) | {0}  # 0: ignored rows' safe index, zero values
    dense = tf.convert_to_tensor(gw).numpy()
    nonzero_rows = set(np.flatnonzero(np.abs(dense).sum(1)))
    assert nonzero_rows == set(ids) | set(y[y >= 0])
    assert tuple(gw.dense_shape.numpy()) == (V, D)


def test_seed_reproducible_and_unseeded_fresh():
    x = tf.random.normal([32, 8])
    w = tf.random.normal([500, 8])
    y = tf.random.uniform([32], 0, 500, tf.int32)
    for negatives in NEGATIVES:
        options = ht.SampledOptions(k=16, negatives=negatives)
        a = ht.sampled_harmonic_loss(x, w, y, options, seed=7)
        b = ht.sampled_harmonic_loss(x, w, y, options, seed=7)
        c = ht.sampled_harmonic_loss(x, w, y, options, seed=8)
        assert float(a) == float(b) and float(a) != float(c)
        f = tf.function(lambda o=options: ht.sampled_harmonic_loss(x, w, y, o))
        assert float(f()) != float(f())


def test_seeded_negatives_agree_eager_graph_xla():
    x = tf.random.normal([16, 8])
    w = tf.random.normal([200, 8])
    y = tf.random.uniform([16], 0, 200, tf.int32)
    for negatives, sampler in itertools.product(NEGATIVES, ["uniform", "log_uniform", [1.0] * 200]):
        options = ht.SampledOptions(k=8, negatives=negatives, sampler=sampler, in_batch_negatives=4)

        def f(options=options):
            return ht.sampled_harmonic_loss(x, w, y, options, seed=3)

        vals = {float(f()), float(tf.function(f)()), float(tf.function(f, jit_compile=True)())}
        assert len(vals) == 1 or np.ptp(list(vals)) < 1e-5, (negatives, sampler, vals)


def test_approx_matches_reference_with_its_own_negatives(monkeypatch, rng):
    import harmonic_tf.ops.sampling as sampling

    x = rng.normal(size=(10, 4))
    w = rng.normal(size=(8, 4))
    y = rng.integers(0, 8, 10)
    drawn = {}
    original = sampling.UniformSampler.sample_excluding

    def spy(self, labels, k, stream):
        drawn["ids"] = original(self, labels, k, stream)
        return drawn["ids"]

    monkeypatch.setattr(sampling.UniformSampler, "sample_excluding", spy)
    ours = ht.harmonic_loss_approx(
        tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(y), eta=16.0, k=5
    )
    ref = sampled_reference(x, w, y, 16.0, per_example_ids=drawn["ids"].numpy(), correction="none")
    np.testing.assert_allclose(float(ours), ref[0], rtol=2e-5)


@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("in_batch", [0, "all", 3])
def test_sampled_denominator_is_unbiased(negatives, in_batch):
    # exp(loss) - 1 = sum over candidates of exp(z_j - logQ_j) / exp(z_y): its mean over draws
    # must be the exact sum over j != y (in-batch ids exactly, sampled draws for the rest).
    x, w, y = _data(8, ignore=True)
    eta = 2.5
    counts = np.arange(V, 0, -1) ** 1.5
    d2 = ((x[:, None, :] - w[None]) ** 2).sum(-1)
    z = -(eta / 2) * np.log(d2 + 1e-9)
    valid = y >= 0
    ys = np.where(valid, y, 0)
    ratio = np.exp(z - z[np.arange(N), ys][:, None])
    exact = ratio.sum(1) - 1.0

    @tf.function
    def draw(seed):
        losses = ht.sampled_harmonic_loss(
            tf.constant(x, tf.float32),
            tf.constant(w, tf.float32),
            tf.constant(y),
            ht.SampledOptions(
                k=6, negatives=negatives, sampler=counts, in_batch_negatives=in_batch
            ),
            eta=eta,
            reduction="none",
            seed=seed,
        )
        return tf.math.expm1(tf.cast(losses, tf.float64))

    draws = np.stack([draw(tf.constant([s, 1])).numpy() for s in range(3000)])
    mean, sem = draws.mean(0)[valid], draws.std(0)[valid] / np.sqrt(len(draws))
    assert np.all(np.abs(mean - exact[valid]) < 5 * sem + 1e-4 * exact[valid]), (mean, exact)


def test_in_batch_capacity_above_batch_is_all_distinct_labels():
    x, w, y = _data(6, ignore=True)
    args = [tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(y)]
    everything = ht.sampled_harmonic_loss(
        *args, PLAIN.replace(k=0, in_batch_negatives="all"), eta=2.5
    )
    large = ht.sampled_harmonic_loss(*args, PLAIN.replace(k=0, in_batch_negatives=10 * N), eta=2.5)
    assert float(everything) == float(large)
    ref = _reference(x, w, y, None, "shared", "all", "negatives", "mean")[0]
    np.testing.assert_allclose(float(large), ref, rtol=2e-5)


@pytest.mark.parametrize("in_batch", [0, "all"])
def test_exact_center_rows_gradient_is_unbiased_for_the_exact_one(in_batch):
    # Centers: every token's exact pull plus S drawn tokens' full-vocabulary push (x N / S);
    # averaged over draws it is the exact loss's centers' gradient. The loss itself and the
    # hidden states' gradient stay the sampled ones.
    x, w, y = _data(9, ignore=True)
    valid = y != -100
    _, _, exact_gw = harmax_numpy(x[valid], w, y[valid], 2.5, reduction="sum")
    args = [tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(y)]
    plain_options = ht.SampledOptions(
        k=5, in_batch_negatives=in_batch, center_gradient="indexed_slices"
    )
    rows_options = plain_options.replace(center_gradient="rows", center_rows=4)

    @tf.function(jit_compile=True)
    def grads(seed):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(args[:2])
            rows = ht.sampled_harmonic_loss(
                *args, rows_options, eta=2.5, reduction="sum", seed=seed
            )
            plain = ht.sampled_harmonic_loss(
                *args, plain_options, eta=2.5, reduction="sum", seed=seed
            )
        gx_rows, gw_rows = tape.gradient(rows, args[:2])
        return rows, plain, gx_rows, tape.gradient(plain, args[0]), gw_rows

    draws = [grads(tf.constant([s, 2])) for s in range(2000)]
    for rows, plain, gx_rows, gx_plain, _ in draws[:5]:
        assert float(rows) == float(plain)
        np.testing.assert_array_equal(gx_rows.numpy(), gx_plain.numpy())
    gw = np.stack([d[4].numpy() for d in draws])
    z = (gw.mean(0) - exact_gw) / (gw.std(0) / np.sqrt(len(gw)) + 1e-6)
    assert np.abs(z).max() < 5, np.abs(z).max()
    # Every center moves, as in exact training (sampled candidates leave most rows at zero).
    assert np.all(np.abs(gw[0]).sum(1) > 0)


@pytest.mark.parametrize("in_batch", [0, 6, "all"])
def test_center_control_variate_is_unbiased_and_lowers_the_noise(in_batch):
    # The own-label and in-batch push of every token enters in full and the rows' share of it
    # is subtracted: the same expectation (float64 reference), less spread over the draws. As
    # in a trained model, hidden states sit near their labels' centers (p_y is large).
    x, w, y = _data(9, ignore=True)
    valid = y != -100
    x[valid] = w[y[valid]] + 0.3 * np.random.default_rng(1).normal(size=x[valid].shape)
    _, _, exact_gw = harmax_numpy(x[valid], w, y[valid], 2.5, reduction="sum")
    args = [tf.constant(x, tf.float32), tf.constant(w, tf.float32), tf.constant(y)]
    rows = ht.SampledOptions(
        k=5, in_batch_negatives=in_batch, center_rows=4, center_control_variate=False
    )
    both = [rows, rows.replace(center_control_variate=True)]

    @tf.function(jit_compile=True)
    def grads(seed):
        out = []
        for options in both:
            with tf.GradientTape() as tape:
                tape.watch(args[1])
                loss = ht.sampled_harmonic_loss(*args, options, eta=2.5, reduction="sum", seed=seed)
            out.append(tape.gradient(loss, args[1]))
        return out

    draws = [grads(tf.constant([s, 3])) for s in range(2000)]
    plain, variate = (np.stack([d[i].numpy() for d in draws]) for i in range(2))
    z = (variate.mean(0) - exact_gw) / (variate.std(0) / np.sqrt(len(variate)) + 1e-6)
    assert np.abs(z).max() < 5, np.abs(z).max()
    spread = [np.sqrt(((g - g.mean(0)) ** 2).sum((1, 2)).mean()) for g in (plain, variate)]
    assert spread[1] < 0.8 * spread[0], spread


def test_center_control_variate_needs_center_rows():
    with pytest.raises(ValueError, match="center_control_variate"):
        ht.SampledOptions(center_gradient="indexed_slices", center_control_variate=True)
    with pytest.raises(TypeError, match="center_control_variate"):
        ht.SampledOptions(center_control_variate=1)
    sparse = ht.SampledOptions(center_control_variate=True).replace(center_gradient="dense")
    assert not sparse.center_control_variate and sparse.center_rows is None


def test_center_control_variate_is_on_by_default_where_there_are_rows():
    assert ht.SampledOptions().center_control_variate is True
    assert ht.SampledOptions(center_gradient="indexed_slices").center_control_variate is False
    assert ht.SampledOptions.prototype().center_control_variate is False
    back = ht.SampledOptions(center_gradient="dense").replace(center_gradient="rows")
    assert back.center_control_variate is True and back.center_rows == 128
    # A saved config keeps what it said: an explicit False is not turned on.
    off = ht.SampledOptions(center_control_variate=False)
    assert ht.SampledOptions.from_config(off.get_config()).center_control_variate is False
    assert ht.SampledOptions.from_config(off.get_config()).replace(k=64) == off.replace(k=64)


@pytest.mark.parametrize("in_batch", ["all", 5, 100])
def test_in_batch_with_unknown_batch_size(in_batch):
    x, w, y = _data(7, ignore=True)
    options = ht.SampledOptions(k=0, in_batch_negatives=in_batch)
    f = tf.function(
        lambda x, y: ht.sampled_harmonic_loss(x, tf.constant(w, tf.float32), y, options, eta=2.5),
        input_signature=[tf.TensorSpec([None, D]), tf.TensorSpec([None], tf.int64)],
    )
    capacity = in_batch if in_batch == "all" else min(in_batch, N)
    ref = _reference(x, w, y, None, "shared", capacity, "negatives", "mean")[0]
    np.testing.assert_allclose(float(f(x.astype(np.float32), y)), ref, rtol=2e-5)
    # An empty batch has no in-batch negatives at all: the loss is 0, not an error.
    assert float(f(np.zeros([0, D], np.float32), np.zeros([0], np.int64))) == 0.0


def _fused_computations_of(hlo: str, shape: str) -> list[str]:
    """Bodies of the fusions whose output is ``f32[shape]`` in an optimized HLO module."""
    import re

    called = re.findall(rf"= f32\[{shape}\]\S* fusion\(.*?calls=(%[\w.\-]+)", hlo)
    bodies = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^(%[\w.\-]+) \(.*?\{\n(.*?)\n\}", hlo, re.M | re.S)
    }
    return [bodies[name] for name in called]


def test_candidate_logits_fusion_holds_no_concatenation():
    # XLA on the CPU fused the [K] logQ/validity concatenation into every element of the
    # [N, K] logits fusion, which then ran 2.4x slower; the [K] bias is now its own buffer.
    n, vocab, dim, k, m = 512, 2000, 16, 64, 128
    x = tf.random.normal([n, dim])
    w = tf.random.normal([vocab, dim])
    y = tf.random.uniform([n], 0, vocab, tf.int32, seed=1)
    loss = tf.function(
        lambda a, b, c: ht.sampled_harmonic_loss(
            a, b, c, ht.SampledOptions(k=k, in_batch_negatives=m), seed=0
        ),
        jit_compile=True,
    )
    hlo = loss.experimental_get_compiler_ir(x, w, y)(stage="optimized_hlo")
    bodies = _fused_computations_of(hlo, f"{n},{k + m}")
    assert bodies and any(" log(" in body for body in bodies)
    assert not [body for body in bodies if "concatenate(" in body]


@pytest.mark.parametrize("preset", ["defaults", "tf_sampled_softmax", "prototype"])
def test_presets_match_the_float64_reference(preset):
    # Each named estimator with pinned draws against the plain formula it stands for.
    x, w, y = _data(12, ignore=preset != "prototype")
    per_example = preset == "prototype"
    ids = _ids(12, "per_example" if per_example else "shared", y)
    options = {
        "defaults": ht.SampledOptions(k=K),
        "tf_sampled_softmax": ht.SampledOptions.tf_sampled_softmax(K),
        "prototype": ht.SampledOptions.prototype(K),
    }[preset]
    loss, gx, _ = _run_ours(x, w, y, ids, "xla", False, options, eta=2.5, seed=1)
    in_batch = first_distinct_labels(y) if preset == "defaults" else None
    sampler = "uniform" if per_example else "log_uniform"
    ref = sampled_reference(
        x,
        w,
        y,
        2.5,
        per_example_ids=ids if per_example else None,
        shared_ids=None if per_example else ids,
        in_batch_ids=in_batch,
        log_q=log_q_numpy(sampler, V),
        correction={"defaults": "negatives", "tf_sampled_softmax": "all", "prototype": "none"}[
            preset
        ],
    )
    np.testing.assert_allclose(float(loss), ref[0], rtol=2e-5)
    # The hidden states' gradient is the candidates'; the defaults' centers gradient (center
    # rows) is checked for unbiasedness in test_exact_center_rows_gradient_is_unbiased...
    np.testing.assert_allclose(gx.numpy(), ref[1], rtol=2e-4, atol=2e-6)
