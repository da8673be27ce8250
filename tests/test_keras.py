"""HarmonicLMHead + HarmonicLoss in real Keras workflows."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

from conftest import f32_buffer_sizes
from reference import harmax_numpy

V, D, F = 40, 12, 8


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, F)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(F, V)), 1).astype("int32")
    return x, y


# Sparse centers gradient: only the candidates move the centers (no in-batch ids, no rows).
SPARSE = ht.SampledOptions(in_batch_negatives=0, center_gradient="indexed_slices")


def _sampled(k):
    """The loss's estimator: exact for ``k=None``, else the defaults with ``k`` draws."""
    return None if k is None else ht.SampledOptions(k=k)


def _model(k=None, seed=0, head_kwargs=None, **loss_kwargs):
    keras.utils.set_random_seed(seed)
    inp = keras.Input([F])
    h = keras.layers.Dense(D, name="proj")(keras.layers.Dense(32, activation="relu")(inp))
    head = ht.HarmonicLMHead(V, name="head", **(head_kwargs or {}))
    model = ht.HarmonicModel(inp, head(h))
    loss = ht.HarmonicLoss(sampled=_sampled(k), seed=1, **loss_kwargs, exact_fallback=False)
    return model, head, loss


def _hidden(model, x):
    return keras.Model(model.input, model.get_layer("proj").output)(x)


@pytest.mark.parametrize("k", [None, 8])
@pytest.mark.parametrize("jit", [False, True])
def test_compile_fit_evaluate_predict(data, k, jit):
    x, y = data
    exact = ht.ExactOptions(chunk_size=16 if k is None else None, dense_max_bytes=0)
    model, head, loss = _model(k, exact=exact)
    model.compile(
        keras.optimizers.Adam(3e-3),
        loss=loss,
        metrics=[ht.HarmonicAccuracy(), ht.HarmonicPerplexity()],
        jit_compile=jit,
    )
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    hist = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    after = model.evaluate(x, y, verbose=0, return_dict=True)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert after["loss"] < before["loss"] - 0.5
    # evaluate reports the exact full-vocabulary loss, whatever k trained it.
    exact = ht.harmonic_loss(_hidden(model, x), head.centers, y)
    np.testing.assert_allclose(after["loss"], float(exact), rtol=1e-4)
    np.testing.assert_allclose(after["perplexity"], np.exp(float(exact)), rtol=1e-3)
    logits = model.predict(x[:7], verbose=0)
    assert logits.shape == (7, V)
    ref = ht.harmonic_logits(_hidden(model, x[:7]), head.centers)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-4)
    acc = np.mean(np.argmax(model.predict(x, verbose=0), 1) == y)
    np.testing.assert_allclose(after["accuracy"], acc, atol=1e-6)


def test_probabilities_output(data):
    x, y = data
    model, _, loss = _model(head_kwargs={"output_mode": "probabilities"})
    model.compile("adam", loss=loss)
    p = model.predict(x[:5], verbose=0)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    model.fit(x, y, epochs=1, verbose=0)
    logits_model, _, _ = _model()  # the same model with output_mode="logits"
    logits_model.set_weights(model.get_weights())
    z = logits_model.predict(x[:5], verbose=0).astype(np.float64)
    softmax = np.exp(z - z.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x[:5], verbose=0), softmax, rtol=1e-5, atol=1e-7)
    ev = model.evaluate(x, y, verbose=0)  # the loss of the hidden states, as for logits
    hidden, centers = _hidden(model, x), model.get_layer("head").centers
    ref, _, _ = harmax_numpy(hidden, centers, y, float(model.get_layer("head").resolved_eta()))
    np.testing.assert_allclose(ev, ref, rtol=1e-5)


def test_frozen_head_fails_loudly(data):
    x, y = data
    model, head, loss = _model(k=8)
    head.trainable = False
    model.compile("adam", loss=loss)
    with pytest.raises(ValueError, match="not trainable"):
        model.fit(x, y, epochs=1, verbose=0)
    # On purpose: allowed, and the centers stay fixed.
    model, head, _ = _model(k=8)
    head.trainable = False
    model.compile(
        "adam",
        loss=ht.HarmonicLoss(
            sampled=_sampled(8), require_trainable_centers=False, exact_fallback=False
        ),
    )
    before = head.centers.numpy().copy()
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(head.centers.numpy(), before)


def test_harmonic_loss_on_a_plain_model_fails_before_the_first_step(data):
    x, y = data
    keras.utils.set_random_seed(0)
    inp = keras.Input([F])
    model = keras.Model(inp, ht.HarmonicLMHead(V)(keras.layers.Dense(D)(inp)))
    model.compile("adam", loss=ht.HarmonicLoss(sampled=_sampled(8), exact_fallback=False))
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match="hidden states.*HarmonicModel"):
        model.fit(x, y, epochs=1, verbose=0)
    for b, w in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(b, w.numpy())


def test_harmonic_model_needs_a_head_output():
    inp = keras.Input([F])
    with pytest.raises(ValueError, match="HarmonicLMHead's output.*dense"):
        ht.HarmonicModel(inp, keras.layers.Dense(V, name="dense")(inp))
    with pytest.raises(TypeError, match="no longer takes the head"):
        ht.HarmonicLoss(ht.HarmonicLMHead(V))


def test_output_is_what_output_shape_says_in_training_too(data):
    x, _ = data
    model, _, loss = _model(k=8)
    model.compile("adam", loss=loss)
    assert model(x[:5], training=True).shape == (5, V) == (5, *model.output_shape[1:])
    np.testing.assert_allclose(
        model(x[:5], training=True), model.predict(x[:5], verbose=0), rtol=1e-6
    )


def _cross_entropy(logits, y):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y])


@pytest.mark.parametrize("k", [None, 8])
def test_recompiling_with_stock_loss_and_metric_trains_on_logits(data, k):
    """A harmonic-trained model re-compiled with stock cross-entropy and accuracy under XLA:
    they see the harmonic logits (finite, correct numbers), never hidden states."""
    x, y = data
    model, _, loss = _model(k)
    model.compile(keras.optimizers.Adam(3e-3), loss=loss, jit_compile=True)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    model.compile(
        keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        jit_compile=True,
    )
    logits = model.predict(x[:256], verbose=0)
    first = model.train_on_batch(x[:256], y[:256], return_dict=True)
    np.testing.assert_allclose(first["loss"], _cross_entropy(logits, y[:256]), rtol=1e-4)
    np.testing.assert_allclose(first["acc"], np.mean(logits.argmax(1) == y[:256]), atol=1e-6)
    hist = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    ev = model.evaluate(x, y, verbose=0, return_dict=True)
    logits = model.predict(x, verbose=0)
    np.testing.assert_allclose(ev["loss"], _cross_entropy(logits, y), rtol=1e-4)
    np.testing.assert_allclose(ev["acc"], np.mean(logits.argmax(1) == y), atol=1e-6)
    # And back to the harmonic loss: the hidden-state route again, exact in evaluate.
    model.compile("adam", loss=ht.HarmonicLoss(), metrics=[ht.HarmonicAccuracy()])
    ev = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(ev["loss"], _cross_entropy(logits, y), rtol=1e-4)


@pytest.mark.parametrize("k", [None, 8])
def test_training_metrics_are_exact_or_not_shown(data, k):
    x, y = data
    model, _, loss = _model(k)
    model.compile(
        keras.optimizers.Adam(3e-3),
        loss=loss,
        metrics=[ht.HarmonicAccuracy(), ht.HarmonicPerplexity(), "sparse_categorical_accuracy"],
    )
    hist = model.fit(x, y, epochs=2, batch_size=64, verbose=0, validation_data=(x, y)).history
    assert all(np.all(np.isfinite(v)) for v in hist.values()), hist
    assert "accuracy" not in hist and "val_accuracy" in hist and "val_perplexity" in hist
    # Stock metrics read the logits in training too.
    assert "sparse_categorical_accuracy" in hist
    if k is None:  # the exact training loss: its perplexity, per token
        np.testing.assert_allclose(hist["perplexity"], np.exp(hist["loss"]), rtol=1e-5)
    else:  # a sampled loss estimates no perplexity
        assert "perplexity" not in hist


@pytest.mark.parametrize("jit", [False, True])
def test_exact_fallback_trains_the_exact_loss_where_sampling_is_slower(data, jit):
    """At V = 40 the sampled step would be the slower one: the default sampled loss trains
    with the exact loss (float64 NumPy of the step's inputs, the same update as an exact
    model's, the exact perplexity shown); ``exact_fallback=False`` samples."""
    x, y = data[0][:64], data[1][:64]
    sampled = ht.SampledOptions(k=8)
    runs = {}
    for name, loss in {
        "exact": ht.HarmonicLoss(),
        "fallback": ht.HarmonicLoss(sampled=sampled, seed=1),
        "sampled": ht.HarmonicLoss(sampled=sampled, seed=1, exact_fallback=False),
    }.items():
        model, head, _ = _model()
        model.compile(
            keras.optimizers.SGD(0.5), loss=loss, metrics=[ht.HarmonicPerplexity()],
            jit_compile=jit,
        )  # fmt: skip
        hidden, centers = _hidden(model, x).numpy(), head.centers.numpy()
        logs = model.train_on_batch(x, y, return_dict=True)
        runs[name] = logs, head.centers.numpy()
    want, _, grad = harmax_numpy(hidden, centers, y, eta=2 * D)  # float64
    np.testing.assert_allclose(runs["fallback"][0]["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(runs["fallback"][1], centers - 0.5 * grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(runs["fallback"][1], runs["exact"][1], rtol=1e-5, atol=1e-6)
    assert "perplexity" in runs["fallback"][0] and "perplexity" not in runs["sampled"][0]
    assert abs(runs["sampled"][0]["loss"] - want) > 1e-3
    assert np.abs(runs["sampled"][1] - runs["exact"][1]).max() > 1e-4


def test_training_estimator_follows_tokens_and_vocabulary():
    options = ht.SampledOptions()
    loss = ht.HarmonicLoss(sampled=options)
    # Decided by SampledOptions.faster_than_exact where the token count is known.
    assert loss.training_estimator(2048, 3000, 128) is options
    assert loss.training_estimator(2048, 1000, 128) is None
    assert loss.training_estimator(512, 2000, 128) is None  # small batches pay the overhead
    assert loss.training_estimator(None, 1000, 128) is options  # unknown: as asked
    assert ht.HarmonicLoss(sampled=options, exact_fallback=False).training_estimator(
        2048, 1000, 128
    ) is options  # fmt: skip
    assert ht.HarmonicLoss().training_estimator(2048, 50000, 128) is None
    clone = ht.HarmonicLoss.from_config(
        ht.HarmonicLoss(sampled=options, exact_fallback=False).get_config()
    )
    assert clone.exact_fallback is False
    with pytest.raises(TypeError, match="`exact_fallback` must be a bool"):
        ht.HarmonicLoss(sampled=options, exact_fallback="no")


def test_evaluate_step_hlo_has_no_tokens_by_vocab_buffer():
    n, vocab, dim = 256, 32768, 16
    keras.utils.set_random_seed(0)
    inp = keras.Input([8])
    model = ht.HarmonicModel(inp, ht.HarmonicLMHead(vocab)(keras.layers.Dense(dim)(inp)))
    model.compile(
        "sgd",
        loss=ht.HarmonicLoss(sampled=True, exact_fallback=False),
        metrics=[ht.HarmonicAccuracy(), ht.HarmonicPerplexity()],
    )
    xb = np.random.default_rng(0).normal(size=(n, 8)).astype("float32")
    yb = np.arange(n, dtype="int32") * 97 % vocab
    logs = model.evaluate(xb, yb, batch_size=n, verbose=0, return_dict=True)
    hidden = keras.Model(model.input, model.layers[-2].output)(xb)
    exact = ht.harmonic_loss(hidden, model.harmonic_head.centers, yb)
    np.testing.assert_allclose(logs["loss"], float(exact), rtol=1e-5)
    step = tf.function(model.test_step, jit_compile=True)
    data = (tf.constant(xb), tf.constant(yb))
    hlo = step.experimental_get_compiler_ir(data)(stage="optimized_hlo")
    sizes = f32_buffer_sizes(hlo)
    assert n * vocab not in sizes
    assert n * ht.HarmonicLoss().exact.evaluation_chunk_size in sizes  # the chunks are there
    # predict does build the logits (so the check can fail).
    predict_hlo = tf.function(model.predict_step, jit_compile=True).experimental_get_compiler_ir(
        tf.constant(xb)
    )(stage="optimized_hlo")
    assert f"f32[{n},{vocab}]" in predict_hlo


@pytest.mark.parametrize("k", [None, 8])
def test_save_load_roundtrip_and_continue(tmp_path, data, k):
    x, y = data
    model, _, loss = _model(k)
    model.compile(keras.optimizers.Adam(1e-2), loss=loss, metrics=[ht.HarmonicPerplexity()])
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        loaded.predict(x[:16], verbose=0), model.predict(x[:16], verbose=0)
    )
    assert isinstance(loaded.loss, ht.HarmonicLoss) and loaded.loss.sampled == _sampled(k)
    before = loaded.evaluate(x, y, verbose=0)
    loaded.fit(x, y, epochs=2, verbose=0)
    assert loaded.evaluate(x, y, verbose=0)[0] < before[0]


def _tied_lm(embedding_cls, seq=6):
    keras.utils.set_random_seed(0)
    tokens = keras.Input([seq], dtype="int32")
    emb = embedding_cls(V, D, name="tok_emb")
    h = keras.layers.Dense(D, name="mix")(emb(tokens))
    head = ht.HarmonicLMHead(tied_embedding=emb, name="head")
    model = ht.HarmonicModel(tokens, head(h))
    return model, emb, head


@pytest.mark.parametrize(
    "embedding_cls", [keras.layers.Embedding, keras.layers.ReversibleEmbedding]
)
def test_tied_embedding_trains_one_matrix_and_survives_reload(tmp_path, embedding_cls):
    rng = np.random.default_rng(1)
    x = rng.integers(0, V, (256, 6)).astype("int32")
    y = (x + 1) % V
    model, emb, head = _tied_lm(embedding_cls)
    assert head.centers is emb.embeddings
    assert len(model.trainable_weights) == 3  # embedding + Dense kernel and bias: no extra matrix
    model.compile(
        keras.optimizers.Adam(1e-2), loss=ht.HarmonicLoss(sampled=_sampled(8), exact_fallback=False)
    )
    before = emb.embeddings.numpy().copy()
    model.fit(x, y, epochs=2, verbose=0)
    assert not np.allclose(emb.embeddings.numpy(), before)
    path = str(tmp_path / "tied.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    lhead = loaded.get_layer("head")
    assert lhead.centers is loaded.get_layer("tok_emb").embeddings
    np.testing.assert_array_equal(loaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0))
    loaded.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(
        lhead.centers.numpy(), loaded.get_layer("tok_emb").embeddings.numpy()
    )


def test_gradient_tape_loop(data):
    x, y = data
    keras.utils.set_random_seed(0)
    body = keras.Sequential(
        [keras.Input([F]), keras.layers.Dense(32, "relu"), keras.layers.Dense(D)]
    )
    head = ht.HarmonicLMHead(V)
    head.build((None, D))
    opt = keras.optimizers.Adam(3e-3)
    variables = body.trainable_variables + head.trainable_variables

    @tf.function(jit_compile=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = ht.sampled_harmonic_loss(
                body(xb, training=True), head.centers, yb, ht.SampledOptions(k=8)
            )
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    first = float(ht.harmonic_loss(body(x), head.centers, y))
    for _ in range(3):
        for i in range(0, len(x), 64):
            step(x[i : i + 64], y[i : i + 64])
    assert float(ht.harmonic_loss(body(x), head.centers, y)) < first - 0.5


def test_sgd_updates_only_touched_center_rows(data):
    x, y = data
    model, head, _ = _model()
    ids = np.array([30, 31, 32, 33])
    xb, yb = x[:16], np.where(y[:16] < 20, y[:16], 0)
    model.compile(
        keras.optimizers.SGD(0.1),
        loss=ht.HarmonicLoss(
            sampled=SPARSE.replace(k=4, sampler=ht.UniformSampler(V)), exact_fallback=False
        ),
        jit_compile=True,
    )
    model(xb)
    before = head.centers.numpy().copy()
    # Pin negatives through a loss whose sampler only draws ids 30..33.
    model.loss.sampled = model.loss.sampled.replace(sampler=_FixedSampler(V, ids))
    model.train_on_batch(xb, yb)
    changed = set(np.flatnonzero(np.abs(head.centers.numpy() - before).sum(1)))
    assert changed and changed <= set(yb) | set(ids)
    assert len(changed) < V


class _FixedSampler(ht.UniformSampler):
    def __init__(self, vocab_size, ids):
        super().__init__(vocab_size)
        self.ids = tf.constant(ids, tf.int32)

    def sample(self, shape, rng):
        return tf.reshape(
            tf.tile(self.ids, [-(-int(np.prod(shape)) // len(self.ids))])[: int(np.prod(shape))],
            shape,
        )


def test_indexed_slices_reach_the_optimizer():
    # A Keras optimizer applies the sparse center gradient as it is: the rows it names move by
    # -lr * their gradient (summed over repeats), every other row stays bitwise the same.
    head = ht.HarmonicLMHead(V)
    head.build((None, D))
    before = head.centers_variable.numpy().copy()
    with tf.GradientTape() as tape:
        loss = ht.sampled_harmonic_loss(
            tf.random.normal([8, D]), head.centers, tf.range(8), SPARSE.replace(k=4), seed=[1, 2]
        )
    (grad,) = tape.gradient(loss, [head.centers_variable])
    assert isinstance(grad, tf.IndexedSlices)
    keras.optimizers.SGD(0.5).apply_gradients([(grad, head.centers_variable)])
    dense = tf.math.unsorted_segment_sum(grad.values, grad.indices, V).numpy()
    touched = np.unique(grad.indices.numpy())
    after = head.centers_variable.numpy()
    np.testing.assert_allclose(after[touched], before[touched] - 0.5 * dense[touched], atol=1e-6)
    untouched = np.setdiff1d(np.arange(V), touched)
    assert len(untouched) > 0
    np.testing.assert_array_equal(after[untouched], before[untouched])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("k", [None, 8])
def test_mixed_precision(data, policy, k):
    x, y = data
    keras.mixed_precision.set_global_policy(policy)
    try:
        model, head, loss = _model(k)
        model.compile(keras.optimizers.Adam(3e-3), loss=loss, jit_compile=True)
        hist = model.fit(x, y, epochs=2, batch_size=64, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"]))
        assert hist.history["loss"][-1] < hist.history["loss"][0]
        assert head.centers.dtype == "float32"
        assert model.predict(x[:3], verbose=0).dtype == np.float32
        ev = model.evaluate(x, y, verbose=0)
        assert np.isfinite(ev)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_ignore_index_and_sample_weight(data):
    x, y = data
    model, head, loss = _model()
    model.compile("adam", loss=loss)
    yi = y.copy()
    yi[::3] = -100
    hidden = _hidden(model, x)
    per_token = ht.harmonic_loss(hidden, head.centers, yi, reduction="none").numpy()
    keep = yi != -100
    np.testing.assert_allclose(
        model.evaluate(x, yi, batch_size=len(x), verbose=0), per_token[keep].mean(), rtol=1e-5
    )
    sw = np.random.default_rng(0).uniform(0, 2, len(x)).astype("float32")
    got = model.evaluate(x, yi, sample_weight=sw, batch_size=len(x), verbose=0)
    np.testing.assert_allclose(got, (per_token * sw)[keep].sum() / keep.sum(), rtol=1e-5)
    # In training too: ignored tokens give no gradient at all.
    only_ignored = np.full_like(y, -100)
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.compile(
        keras.optimizers.SGD(0.1), loss=ht.HarmonicLoss(sampled=_sampled(8), exact_fallback=False)
    )
    model.train_on_batch(x[:32], only_ignored[:32])
    for b, w in zip(before, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(b, w.numpy())


@pytest.mark.parametrize(
    "center_rows, variate, distance",
    [(0, False, "euclidean"), (128, False, "euclidean"), (128, True, "euclidean"),
     (0, False, "cosine"), (128, True, "cosine")],
)  # fmt: skip
def test_sampled_training_step_hlo_has_no_tokens_by_vocab_buffer(center_rows, variate, distance):
    # Center rows cost one [S, V] buffer (S = 128 by default), whatever the number of tokens;
    # their control variate only [N, in-batch] ones.
    n, vocab, dim = 512, 5000, 16
    body = keras.layers.Dense(dim)
    head = ht.HarmonicLMHead(vocab, distance=distance)
    body.build((None, 8))
    head.build((None, dim))
    opt = keras.optimizers.SGD(0.1)
    variables = body.trainable_variables + head.trainable_variables
    opt.build(variables)

    @tf.function(jit_compile=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            options = (
                ht.SampledOptions(k=64, center_rows=center_rows, center_control_variate=variate)
                if center_rows
                else ht.SampledOptions(k=64, center_gradient="indexed_slices")
            )
            loss = ht.sampled_harmonic_loss(
                body(xb), head.centers, yb, options, seed=0, distance=distance
            )
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    args = (tf.random.normal([n, 8]), tf.random.uniform([n], 0, vocab, tf.int32))
    hlo = step.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    sizes = f32_buffer_sizes(hlo)
    assert n * vocab not in sizes
    assert (center_rows * vocab in sizes) == bool(center_rows)
    assert vocab * dim in sizes  # sanity: the HLO and the centers' update are in there
    # And the exact loss's step does build it (so the check can fail).
    exact_hlo = tf.function(
        lambda a, b: ht.harmonic_loss(body(a), head.centers, b), jit_compile=True
    ).experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    assert f"f32[{n},{vocab}]" in exact_hlo


DISTRIBUTED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, harmonic_tf as ht
    from harmonic_tf.ops.sampling import RandomStream
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(8, 40)), 1).astype("int32")
    def build(k):
        keras.utils.set_random_seed(0)
        inp = keras.Input([8]); head = ht.HarmonicLMHead(40, name="head")
        model = ht.HarmonicModel(inp, head(keras.layers.Dense(12)(inp)))
        sampled = None if k is None else ht.SampledOptions(k=k)
        model.compile(keras.optimizers.Adam(3e-3), loss=ht.HarmonicLoss(sampled=sampled, seed=3, exact_fallback=False))
        return model
    single = build(None)
    single_loss = single.evaluate(x, y, batch_size=64, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = build(8)
    model.set_weights(single.get_weights())
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=64, verbose=0), single_loss, rtol=1e-5)
    hist = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0], hist.history
    # Two replicas, one seeded loss: different negatives per replica.
    loss = model.loss
    def draw():
        seed = loss.seed_for(model.get_layer("head").next_sampling_step())
        return ht.UniformSampler(1000).sample([16], RandomStream(seed))
    per_replica = strategy.experimental_local_results(strategy.run(tf.function(draw)))
    assert not np.array_equal(per_replica[0].numpy(), per_replica[1].numpy())
    print("DISTRIBUTED_OK")
    """
)


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True, env=env, timeout=600
    )
    assert "DISTRIBUTED_OK" in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_compute_loss_weights_sequences_and_tokens(chunk_size):
    """``model.compute_loss`` (the tape-loop entry) against the per-token exact losses."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, V, (4, 6)).astype("int32")
    y = rng.integers(0, V, (4, 6))
    y[0, :2] = -100
    model, _, head = _tied_lm(keras.layers.Embedding)
    model.compile(loss=ht.HarmonicLoss(exact=ht.ExactOptions(chunk_size, dense_max_bytes=0)))
    hidden = keras.Model(model.input, model.get_layer("mix").output)(tokens)
    per_token = ht.harmonic_loss(hidden, head.centers, y, reduction="none").numpy()
    keep = y != -100
    for sw in (None, rng.uniform(0, 2, 4), rng.uniform(0, 2, (4, 6))):
        got = float(model.compute_loss(tokens, y.astype("float32"), sample_weight=sw))
        w = (
            np.ones_like(per_token)
            if sw is None
            else np.broadcast_to(sw if np.ndim(sw) == 2 else sw[:, None], per_token.shape)
        )
        expected = (per_token * w)[keep].sum() / keep.sum()
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sample_weights_of_unknown_rank_are_named():
    model, _, _ = _tied_lm(keras.layers.Embedding)
    model.compile(loss=ht.HarmonicLoss())
    tokens = tf.zeros([2, 6], tf.int32)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def loss_with(sw):
        return model.compute_loss(tokens, tf.zeros([2, 6]), sample_weight=sw)

    with pytest.raises(ValueError, match="`weights` must have a known rank"):
        loss_with.get_concrete_function()


class _Subclassed(ht.HarmonicTraining, keras.Model):
    def __init__(self):
        super().__init__()
        self.body = keras.layers.Dense(D)
        self.head = ht.HarmonicLMHead(V)

    @property
    def harmonic_head(self):
        return self.head

    def hidden_states(self, x, training=False):
        return self.body(x, training=training)

    def call(self, x, training=False):
        return self.head(self.hidden_states(x, training))


def test_subclassed_model_with_the_mixin_routes_its_hidden_states(data):
    x, y = data
    keras.utils.set_random_seed(0)
    model = _Subclassed()
    model.compile(
        keras.optimizers.Adam(3e-3), loss=ht.HarmonicLoss(sampled=_sampled(8), exact_fallback=False)
    )
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=2, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < before - 0.3
    exact = ht.harmonic_loss(model.body(x), model.head.centers, y)
    np.testing.assert_allclose(after, float(exact), rtol=1e-4)


def test_exponent_anneal_moves_the_exponent_geometrically_then_holds_it():
    head = ht.HarmonicLMHead(5, eta="learned", eta_init=8.0, eta_rate=3.0)
    head.build((None, 4))
    anneal = ht.ExponentAnneal(head, steps=4, end=2.0)
    assert not head.log_eta.trainable  # the schedule owns the exponent
    seen = []
    for batch in range(6):
        anneal.on_train_batch_begin(batch)
        seen.append(float(head.resolved_eta()))
    np.testing.assert_allclose(seen, [8.0, 8.0 / 2**0.5, 4.0, 2.0 * 2**0.5, 2.0, 2.0], rtol=1e-5)
    fixed = ht.HarmonicLMHead(5, eta=8.0)
    fixed.build((None, 4))
    with pytest.raises(ValueError, match="eta='learned'"):
        ht.ExponentAnneal(fixed, steps=4)


def test_exponent_anneal_reaches_the_compiled_step_without_a_retrace(data):
    # fit under XLA with the schedule: the loss is computed at the exponent the callback set
    x, y = data
    model, head, loss = _model(head_kwargs={"eta": "learned", "eta_init": 64.0})
    model.compile(keras.optimizers.Adam(1e-3), loss=loss, jit_compile=True)
    anneal = ht.ExponentAnneal(head, steps=3, end=8.0)
    model.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0, callbacks=[anneal])
    np.testing.assert_allclose(float(head.resolved_eta()), 8.0, rtol=1e-5)
    traced = model.train_function
    model.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0, callbacks=[anneal])
    assert model.train_function is traced
    hidden, centers = _hidden(model, x[:64]), head.centers
    ref, _, _ = harmax_numpy(hidden, centers, y[:64], 8.0)
    np.testing.assert_allclose(model.evaluate(x[:64], y[:64], verbose=0), ref, rtol=1e-5)
