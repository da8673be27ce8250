"""keras-hub: HarmonicCausalLM on a random-initialised GPT-2, built offline, and harmonic heads
on keras-hub backbones in functional models."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import harmonic_tf as ht

keras_hub = pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
from harmonic_tf.hub import HarmonicCausalLM  # noqa: E402

from reference import harmonic_logits_numpy, weighted_loss_numpy  # noqa: E402

# Slow: still run in CI, left out of `-m "not slow"`.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_keras_state")]


V, S, D = 300, 12, 32


def _backbone(seed=0):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=V,
        num_layers=2,
        num_heads=2,
        hidden_dim=D,
        intermediate_dim=64,
        max_sequence_length=S + 4,
        dropout=0.0,
    )


def _batches(n=64, seed=0):
    """keras-hub ``CausalLMPreprocessor`` layout: ``({"token_ids", "padding_mask"}, y, mask)``,
    with ragged lengths padded by 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (n, S + 1)).astype("int32")
    ids[:, 1::2] = (ids[:, 0::2][:, : ids[:, 1::2].shape[1]] * 7 + 3) % V  # learnable pairs
    lengths = rng.integers(S // 2, S + 2, n)
    mask = np.arange(S + 1)[None, :] < lengths[:, None]
    ids = np.where(mask, ids, 0)
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], mask[:, 1:].astype("float32")


def _compiled(backbone, **loss_kwargs):
    lm = HarmonicCausalLM(backbone)
    lm.compile(
        keras.optimizers.Adam(3e-3),
        loss=ht.HarmonicLoss(
            sampled=ht.SampledOptions(k=32), seed=0, exact_fallback=False, **loss_kwargs
        ),
        weighted_metrics=[ht.HarmonicAccuracy(), ht.HarmonicPerplexity()],
        sampler="greedy",
        jit_compile=True,
    )
    return lm


def test_default_sampled_loss_trains_exactly_where_sampling_is_slower():
    """At V = 300 a keras-hub model's training step under the default ``exact_fallback`` is the
    exact loss (float64 from its hidden states and tied centers), with its perplexity shown."""
    x, y, sw = _batches(16)
    lm = HarmonicCausalLM(_backbone())
    loss = ht.HarmonicLoss(sampled=ht.SampledOptions(k=8), seed=0)
    lm.compile("sgd", loss=loss, weighted_metrics=[ht.HarmonicPerplexity()], jit_compile=True)
    centers = lm.backbone.token_embedding.embeddings.numpy()
    ref = harmonic_logits_numpy(lm.backbone(x), centers, 2.0 * D)
    logs = lm.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    assert loss.training_estimator(16 * S, V, D) is None and "perplexity" in logs
    np.testing.assert_allclose(logs["loss"], weighted_loss_numpy(ref, y, sw), rtol=1e-4)


def test_fit_evaluate_generate_reload_and_continue(tmp_path):
    x, y, sw = _batches()
    lm = _compiled(_backbone())
    assert lm.harmonic_head.centers is lm.backbone.token_embedding.embeddings
    before = lm.evaluate(x, y, sample_weight=sw, batch_size=16, verbose=0, return_dict=True)
    hist = lm.fit(x, y, sample_weight=sw, batch_size=16, epochs=4, verbose=0).history
    assert all(np.all(np.isfinite(v)) for v in hist.values())
    assert set(hist) == {"loss"}  # sampled: no training accuracy/perplexity is pretended
    logs = lm.evaluate(x, y, sample_weight=sw, batch_size=64, verbose=0, return_dict=True)
    assert logs["loss"] < before["loss"] - 0.1
    logits = lm.predict(x, batch_size=64, verbose=0)
    assert logits.shape == (64, S, V) == (64, S, *lm.output_shape[2:])
    # predict's logits are the harmonic logits of the backbone's hidden states (float64).
    hidden = lm.backbone(x)
    ref = harmonic_logits_numpy(hidden, lm.backbone.token_embedding.embeddings, 2.0 * D)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(logs["loss"], weighted_loss_numpy(ref, y, sw), rtol=1e-4)
    weighted_hits = (logits.argmax(-1) == y) * sw
    np.testing.assert_allclose(logs["accuracy"], weighted_hits.sum() / sw.sum(), atol=1e-6)

    # Greedy generate(): each new token is the argmax of the harmonic logits of its prefix.
    prompt_len, n = 4, 3
    prompt = {
        "token_ids": np.pad(x["token_ids"][:n, :prompt_len], [[0, 0], [0, S - prompt_len]]),
        "padding_mask": np.arange(S)[None, :].repeat(n, 0) < prompt_len,
    }
    out = lm.generate(prompt, stop_token_ids=None)["token_ids"]
    np.testing.assert_array_equal(out[:, :prompt_len], prompt["token_ids"][:, :prompt_len])
    full = lm.predict({"token_ids": out, "padding_mask": np.ones_like(out, bool)}, verbose=0)
    np.testing.assert_array_equal(out[:, prompt_len:], full[:, prompt_len - 1 : -1].argmax(-1))
    # The cached decoding step reads its hidden states through the harmonic head.
    _, cache = lm._build_cache(tf.constant(out))
    step_logits, step_hidden, _ = lm.call_with_cache(tf.constant(out), cache, 0)
    centers = lm.backbone.token_embedding.embeddings
    np.testing.assert_allclose(
        step_logits, harmonic_logits_numpy(step_hidden, centers, 2.0 * D), rtol=1e-5, atol=1e-4
    )
    assert not np.allclose(step_logits, tf.matmul(step_hidden, centers, transpose_b=True))

    # score(): harmonic logits, and exact chunked per-token losses.
    per_token = lm.score(x["token_ids"], x["padding_mask"], scoring_mode="loss", target_ids=y)
    np.testing.assert_allclose((per_token.numpy() * sw).sum() / y.size, logs["loss"], rtol=1e-4)

    # Reloads keep the loss, metrics, sampler and compile settings; training goes on.
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    preset = str(tmp_path / "preset")
    lm.save_to_preset(preset)
    for loaded in (keras.models.load_model(path), HarmonicCausalLM.from_preset(preset)):
        assert loaded.harmonic_loss.get_config() == lm.harmonic_loss.get_config()
        assert loaded.jit_compile and type(loaded.sampler).__name__ == "GreedySampler"
        assert [m.name for m, _ in loaded._harmonic_metrics] == ["accuracy", "perplexity"]
        assert isinstance(loaded, HarmonicCausalLM)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), logits, rtol=1e-4, atol=1e-4)
        assert loaded.harmonic_head.centers is loaded.backbone.token_embedding.embeddings
        start = loaded.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)
        np.testing.assert_allclose(start["loss"], logs["loss"], rtol=1e-4)
        loaded.fit(x, y, sample_weight=sw, batch_size=8, epochs=1, steps_per_epoch=10, verbose=0)
        end = loaded.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)
        assert end["loss"] < start["loss"] and np.isfinite(end["accuracy"])


def test_cosine_head_fits_evaluates_generates_and_reloads(tmp_path):
    x, y, sw = _batches()
    lm = HarmonicCausalLM(_backbone(), distance="cosine")
    sampled = ht.HarmonicLoss(sampled=ht.SampledOptions(k=32), exact_fallback=False)
    lm.compile(keras.optimizers.Adam(3e-3), loss=sampled, sampler="greedy", jit_compile=True)
    evaluate = dict(sample_weight=sw, batch_size=64, verbose=0, return_dict=True)
    before = lm.evaluate(x, y, **evaluate)["loss"]
    lm.fit(x, y, sample_weight=sw, batch_size=16, epochs=3, verbose=0)
    loss = lm.evaluate(x, y, **evaluate)["loss"]
    assert loss < before - 0.1
    centers = lm.backbone.token_embedding.embeddings
    ref = harmonic_logits_numpy(
        lm.backbone(x), centers, ht.default_eta(D, "cosine"), 1e-9, "cosine"
    )
    logits = lm.predict(x, batch_size=64, verbose=0)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss, weighted_loss_numpy(ref, y, sw), rtol=1e-4)
    prompt = {
        "token_ids": x["token_ids"][:2] * (np.arange(S) < 4),
        "padding_mask": np.arange(S)[None].repeat(2, 0) < 4,
    }
    out = lm.generate(prompt, stop_token_ids=None)["token_ids"]
    full = lm.predict({"token_ids": out, "padding_mask": np.ones_like(out, bool)}, verbose=0)
    np.testing.assert_array_equal(out[:, 4:], full[:, 3:-1].argmax(-1))
    lm.save(tmp_path / "cosine.keras")
    loaded = keras.models.load_model(tmp_path / "cosine.keras")
    assert loaded.harmonic_head.distance == "cosine"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), logits, rtol=1e-4, atol=1e-4)


def test_default_compile_is_the_exact_loss_and_harmonic_accuracy():
    lm = HarmonicCausalLM(_backbone())  # keras-hub compiles tasks on construction
    assert isinstance(lm.harmonic_loss, ht.HarmonicLoss) and lm.harmonic_loss.sampled is None
    assert [type(m).__name__ for m, _ in lm._harmonic_metrics] == ["HarmonicAccuracy"]
    x, y, sw = _batches(16)
    logs = lm.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)
    assert lm.harmonic_head.eta is None  # the default rule, documented as 2 D
    ref = harmonic_logits_numpy(lm.backbone(x), lm.backbone.token_embedding.embeddings, 2.0 * D)
    np.testing.assert_allclose(logs["loss"], weighted_loss_numpy(ref, y, sw), rtol=1e-4)


def test_from_preset_of_a_backbone_and_of_a_gpt2_causal_lm(tmp_path):
    backbone = _backbone(3)
    backbone.save_to_preset(str(tmp_path / "bb"))
    keras_hub.models.GPT2CausalLM(backbone).save_to_preset(str(tmp_path / "lm"))
    x, _, _ = _batches(8)
    hidden = backbone(x)
    for preset in ("bb", "lm"):
        lm = HarmonicCausalLM.from_preset(str(tmp_path / preset), eta=4.0)
        assert lm.harmonic_head.eta == 4.0
        ref = harmonic_logits_numpy(hidden, backbone.token_embedding.embeddings, 4.0)
        np.testing.assert_allclose(lm.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-3)


def test_recompile_with_keras_hub_defaults_trains_the_harmonic_logits():
    """keras-hub's own defaults (cross-entropy, SparseCategoricalAccuracy) on a harmonic LM:
    they read the harmonic logits, under XLA, with finite correct numbers."""
    x, y, sw = _batches(32)
    lm = _compiled(_backbone())
    lm.fit(x, y, sample_weight=sw, batch_size=16, epochs=1, verbose=0)
    # keras-hub's own compile (it bypasses ours), then ours with stock objects.
    for compile_ in (
        lambda: keras_hub.models.CausalLM.compile(
            lm, keras.optimizers.Adam(1e-3), jit_compile=True
        ),
        lambda: lm.compile(
            keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
            jit_compile=True,
        ),
    ):
        compile_()
        logits = lm.predict(x, verbose=0)
        logs = lm.train_on_batch(x, y, sample_weight=sw, return_dict=True)
        assert set(logs) == {"loss", "sparse_categorical_accuracy"}
        hits = (logits.argmax(-1) == y) * sw
        np.testing.assert_allclose(
            logs["sparse_categorical_accuracy"], hits.sum() / sw.sum(), atol=1e-6
        )
        assert np.isfinite(logs["loss"]) and all(np.isfinite(w.numpy()).all() for w in lm.weights)


def test_functional_model_on_a_backbone_reloads_its_nested_tie(tmp_path):
    backbone = _backbone()
    inputs = backbone.input
    head = ht.HarmonicLMHead(tied_embedding=backbone.token_embedding, name="head")
    model = ht.HarmonicModel(inputs, head(backbone(inputs)))
    model.compile(
        "adam", loss=ht.HarmonicLoss(sampled=ht.SampledOptions(k=16), exact_fallback=False)
    )
    x, y, sw = _batches(16)
    model.fit(x, y, sample_weight=sw, epochs=1, verbose=0)
    path = str(tmp_path / "nested.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    lhead = loaded.get_layer("head")
    assert lhead.centers is loaded.get_layer(backbone.name).token_embedding.embeddings
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded.fit(x, y, sample_weight=sw, epochs=1, verbose=0)


def test_untied_reversible_embedding_uses_its_output_matrix():
    keras.utils.set_random_seed(0)
    tokens = keras.Input([6], dtype="int32")
    emb = keras.layers.ReversibleEmbedding(50, 8, tie_weights=False, name="emb")
    head = ht.HarmonicLMHead(tied_embedding=emb, name="head")
    model = ht.HarmonicModel(tokens, head(keras.layers.Dense(8, name="mix")(emb(tokens))))
    assert head.centers_variable is emb.reverse_embeddings
    np.testing.assert_array_equal(head.centers, tf.transpose(emb.reverse_embeddings))
    x = np.random.default_rng(0).integers(0, 50, (64, 6)).astype("int32")
    y = (x + 1) % 50
    hidden = keras.Model(model.input, model.get_layer("mix").output)(x)
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        ht.harmonic_logits(hidden, tf.transpose(emb.reverse_embeddings)),
        rtol=1e-5,
        atol=1e-4,
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=ht.HarmonicLoss(sampled=ht.SampledOptions(k=8), exact_fallback=False),
    )
    reverse, forward = emb.reverse_embeddings.numpy().copy(), emb.embeddings.numpy().copy()
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.allclose(emb.reverse_embeddings.numpy(), reverse)  # the centers moved
    assert not np.allclose(emb.embeddings.numpy(), forward)  # and the input embedding


def _twins(seed=0):
    """A HarmonicCausalLM and a stock GPT2CausalLM on two backbones with the same weights."""
    harmonic, stock = _backbone(seed), _backbone(seed)
    stock.set_weights(harmonic.get_weights())
    return HarmonicCausalLM(harmonic), keras_hub.models.GPT2CausalLM(stock)


def test_int8_quantized_model_agrees_with_its_float_model_as_stock_does():
    x, _, _ = _batches(16)
    lm, stock = _twins()
    before, stock_before = lm.predict(x, verbose=0), stock.predict(x, verbose=0)
    for model in (lm, stock):
        model.quantize("int8")
    after, stock_after = lm.predict(x, verbose=0), stock.predict(x, verbose=0)
    agree = (after.argmax(-1) == before.argmax(-1)).mean()
    stock_agree = (stock_after.argmax(-1) == stock_before.argmax(-1)).mean()
    change = np.abs(after - before).max() / np.abs(before).max()
    stock_change = np.abs(stock_after - stock_before).max() / np.abs(stock_before).max()
    assert agree >= min(0.9, stock_agree - 0.05), (agree, stock_agree)
    assert change < max(0.05, 3 * stock_change), (change, stock_change)
    # The head reads the table as the embedding's own lookup dequantizes it.
    emb = lm.backbone.token_embedding
    table = emb.embeddings.numpy().astype("float64") / emb.embeddings_scale.numpy()[:, None]
    np.testing.assert_allclose(lm.harmonic_head.centers, table, rtol=1e-6)
    out = lm.generate(
        {"token_ids": x["token_ids"][:2], "padding_mask": x["padding_mask"][:2]},
        stop_token_ids=None,
    )
    assert out["token_ids"].shape == x["token_ids"][:2].shape


def test_a_quantization_mode_the_head_cannot_read_is_refused():
    lm, _ = _twins()
    lm.quantize("int4")
    x, _, _ = _batches(4)
    with pytest.raises(ValueError, match="int4"):
        lm.predict(x, verbose=0)


def _tokenizer():
    vocab = {"<|endoftext|>": 0, "t": 1, "1": 2, "t1": 3, **{f"w{i}": i for i in range(4, V)}}
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=["t 1"])


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_keras_hub_loaders_build_the_harmonic_model_or_fail_loudly(tmp_path, with_tokenizer):
    preprocessor = None
    if with_tokenizer:
        preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(_tokenizer(), sequence_length=S)
    lm = HarmonicCausalLM(_backbone(), preprocessor)
    lm.compile(
        loss=ht.HarmonicLoss(sampled=ht.SampledOptions(k=8), seed=4, exact_fallback=False),
        sampler="greedy",
    )
    preset = str(tmp_path / "preset")
    lm.save_to_preset(preset)
    x, _, _ = _batches(4)
    logits = lm.score(x["token_ids"], x["padding_mask"])  # predict would run the preprocessor
    # the family's own loader too: the preset's task is a GPT2CausalLM (HarmonicGPT2CausalLM)
    for loader in (keras_hub.models.CausalLM, HarmonicCausalLM, keras_hub.models.GPT2CausalLM):
        loaded = loader.from_preset(preset)
        assert type(loaded).__name__ == "HarmonicGPT2CausalLM", loader
        assert loaded.harmonic_loss.get_config() == lm.harmonic_loss.get_config()
        assert type(loaded.sampler).__name__ == "GreedySampler"
        assert (loaded.preprocessor is not None) == with_tokenizer
        got = loaded.score(x["token_ids"], x["padding_mask"])
        np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="HarmonicCausalLM"):  # never a stock backbone alone
        keras_hub.models.GPT2Backbone.from_preset(preset)


def test_score_takes_numpy_ids_and_clone_model_clones():
    lm, stock = _twins()
    x, y, _ = _batches(4)
    ids = x["token_ids"]
    np.testing.assert_allclose(lm.score(ids), lm.score(ids, np.ones_like(ids, bool)), rtol=1e-6)
    assert lm.score(ids.tolist()).shape == (4, S, V)
    for model in (lm, stock):
        clone = keras.models.clone_model(model)  # new weights, as Keras clones
        assert clone.predict(x, verbose=0).shape == (4, S, V)
    lm.compile(loss=ht.HarmonicLoss(sampled=ht.SampledOptions(k=8), exact_fallback=False))
    assert keras.models.clone_model(lm).predict(x, verbose=0).shape == (4, S, V)


def test_backbones_the_head_cannot_serve_are_refused():
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=D, intermediate_dim=64,
        max_sequence_length=S,
    )  # fmt: skip
    with pytest.raises(ValueError, match="not a causal-LM backbone"):
        HarmonicCausalLM(bert)
    gemma = keras_hub.models.GemmaBackbone(
        vocabulary_size=V, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=D, intermediate_dim=64, head_dim=16, final_logit_soft_cap=30.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="final_logit_soft_cap"):
        HarmonicCausalLM(gemma)


def test_accuracy_is_zero_when_no_token_counts():
    lm = _compiled(_backbone())
    x, y, sw = _batches(8)
    logs = lm.evaluate(x, y, sample_weight=np.zeros_like(sw), verbose=0, return_dict=True)
    assert logs["accuracy"] == 0.0


def test_reloaded_lora_model_warns_before_training_centers_saved_frozen(tmp_path):
    lm = HarmonicCausalLM(_backbone())
    lm.backbone.enable_lora(4)
    assert not lm.harmonic_head.centers_trainable
    loss = ht.HarmonicLoss(
        sampled=ht.SampledOptions(k=8), require_trainable_centers=False, exact_fallback=False
    )
    lm.compile(keras.optimizers.Adam(1e-3), loss=loss)
    x, y, sw = _batches(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # frozen as saved: no warning
        lm.train_on_batch(x, y, sample_weight=sw)
    path = str(tmp_path / "lora.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.harmonic_head.frozen_when_saved
    # keras-hub 0.32 drops the LoRA freeze on reload (a stock GPT2CausalLM too).
    assert loaded.harmonic_head.centers_trainable
    with pytest.warns(UserWarning, match="frozen when this model was saved"):
        loaded.train_on_batch(x, y, sample_weight=sw)


def test_lora_fine_tuning_with_frozen_centers_saves_and_loads_its_adapters(tmp_path):
    """The documented recipe: LoRA on the backbone, the tied embedding (the centers) frozen at
    the pretrained one; keras-hub's save_lora_weights / load_lora_weights round trip."""
    lm = HarmonicCausalLM(_backbone(5))
    lm.backbone.enable_lora(4)
    # keras-hub's enable_lora leaves the adapted layers' biases trainable, and
    # save_lora_weights does not save them: frozen here, the adapters are the whole change.
    biases = [v for v in lm.trainable_variables if v.path.endswith("/bias")]
    assert biases
    for v in biases:
        v.trainable = False
    loss = ht.HarmonicLoss(
        sampled=ht.SampledOptions(k=16), require_trainable_centers=False, exact_fallback=False
    )
    lm.compile(keras.optimizers.Adam(1e-2), loss=loss, jit_compile=True)
    centers = lm.harmonic_head.centers_variable.numpy().copy()
    x, y, sw = _batches(16)
    start = lm.evaluate(x, y, sample_weight=sw, verbose=0)
    lm.fit(x, y, sample_weight=sw, batch_size=8, epochs=3, verbose=0)
    assert lm.evaluate(x, y, sample_weight=sw, verbose=0) < start
    np.testing.assert_array_equal(lm.harmonic_head.centers_variable.numpy(), centers)
    path = str(tmp_path / "adapters.lora.h5")
    lm.backbone.save_lora_weights(path)
    fresh = HarmonicCausalLM(_backbone(5))
    fresh.backbone.enable_lora(4)
    fresh.backbone.load_lora_weights(path)
    np.testing.assert_allclose(
        fresh.predict(x, verbose=0), lm.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def _calibrated(how: str, x, y, weight):
    """A harmonic GPT-2 at ``eta = 2 D`` calibrated by ``calibrate_eta`` after construction or
    by ``from_causal_lm(stock, calibrate=...)`` with a batch or a dataset; its predictions
    before calibration."""
    if how == "method":
        lm = HarmonicCausalLM(_backbone(), eta=2.0 * D)
        lm.compile(loss=ht.HarmonicLoss(), sampler="greedy")
        before = lm.predict(x, verbose=0)
        return lm, lm.calibrate_eta(x, y, weight), before
    stock = keras_hub.models.GPT2CausalLM(_backbone(), preprocessor=None)
    before = HarmonicCausalLM.from_causal_lm(stock, eta=2.0 * D).predict(x, verbose=0)
    data = (x, y, weight)
    if how == "dataset":
        data = tf.data.Dataset.from_tensor_slices(data).batch(len(y))
    lm = HarmonicCausalLM.from_causal_lm(stock, calibrate=data, eta=2.0 * D)
    assert type(lm).__name__ == "HarmonicGPT2CausalLM"
    lm.compile(loss=ht.HarmonicLoss(), sampler="greedy")
    return lm, lm.harmonic_head.eta, before


@pytest.mark.parametrize("how", ["method", "from_causal_lm", "dataset"])
def test_calibrate_eta_takes_the_grid_exponent_of_lowest_float64_loss_and_retraces(how):
    from reference import harmax_numpy

    keras.utils.set_random_seed(0)
    x, y, weight = _batches(16)
    lm, eta, before = _calibrated(how, x, y, weight)
    hidden = np.asarray(lm.hidden_states(x), np.float64).reshape(-1, D)
    centers = np.asarray(lm.harmonic_head.centers, np.float64)
    grid = 2.0 * D * 2.0 ** (np.arange(-8, 9) / 4)
    losses = []
    for candidate in grid:  # the weighted mean loss, float64
        per_token, _, _ = harmax_numpy(hidden, centers, y.reshape(-1), candidate, reduction="none")
        losses.append((per_token * weight.reshape(-1)).sum() / weight.sum())
    assert eta == pytest.approx(grid[int(np.argmin(losses))], rel=1e-9)
    assert eta != 2.0 * D and lm.harmonic_head.eta == eta  # a random model: not the default
    after = lm.predict(x, verbose=0)  # retraced with the new exponent
    np.testing.assert_allclose(after, before * eta / (2.0 * D), rtol=1e-4, atol=1e-3)
    assert lm.get_config()["eta"] == eta  # saved with the model
    # A learned exponent starts from the calibrated one (its log_eta weight is set).
    learned = HarmonicCausalLM(_backbone(), eta="learned", eta_rate=2.0)
    assert learned.calibrate_eta(x, y, weight) == pytest.approx(eta, rel=1e-9)
    assert float(learned.harmonic_head.resolved_eta()) == pytest.approx(eta, rel=1e-5)


def test_from_causal_lm_refuses_a_calibration_batch_it_cannot_read():
    stock = keras_hub.models.GPT2CausalLM(_backbone(), preprocessor=None)
    x, _, _ = _batches(4)
    with pytest.raises(ValueError, match=r"`calibrate` must be a batch \(x, y\)"):
        HarmonicCausalLM.from_causal_lm(stock, calibrate=x)


def test_every_head_argument_is_taken_and_saved():
    import inspect

    from harmonic_tf.keras.hub import HEAD_ARGUMENTS

    taken = inspect.signature(HarmonicCausalLM.__init__).parameters
    assert set(HEAD_ARGUMENTS) <= set(taken)
    assert set(HEAD_ARGUMENTS) <= set(inspect.signature(ht.HarmonicLMHead).parameters)
    args = dict(eta="learned", eta_init=3.0, eta_rate=2.0, eps=1e-6, distance="cosine")
    lm = HarmonicCausalLM(_backbone(), **args)
    config = lm.get_config()
    assert {k: config[k] for k in args} == args and config["frozen_when_saved"] is False
    clone = type(lm).from_config(config)
    assert {k: clone.harmonic_head.get_config()[k] for k in args} == args
    np.testing.assert_allclose(float(clone.harmonic_head.resolved_eta()), 3.0, rtol=1e-6)
