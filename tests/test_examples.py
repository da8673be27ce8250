"""Smoke tests of the examples on small slices of the shared data: outputs exist and the losses
fell. These are tests, not benchmarks."""

import json

import numpy as np
import pytest

from conftest import shared_data_path

pytestmark = pytest.mark.slow  # still run in CI; left out of `-m "not slow"`


def test_transformer_lm_quick_on_tiny_shakespeare(tmp_path):
    import transformer_lm

    text = shared_data_path("tinyshakespeare.txt")
    small = tmp_path / "shakespeare_head.txt"
    small.write_text(open(text, encoding="utf-8").read()[:200_000], encoding="utf-8")
    out = tmp_path / "lm"
    results = transformer_lm.main(
        ["--text", str(small), "--quick", "--out", str(out), "--verbose", "0"]
    )
    assert {r["kind"] for r in results} == {"ce", "exact", "sampled"}
    for r in results:
        assert r["val_loss"][-1] < r["val_loss"][0] - 0.2, r["name"]
        assert r["tokens_per_second"] > 0 and len(r["samples"]) == 1
        # Prototypes: the harmonic heads' 5 nearest tokens per position, nearest first.
        assert len(r["prototypes"]) == (0 if r["kind"] == "ce" else 6)
        for p in r["prototypes"]:
            distances = [d for _, d in p["nearest"]]
            assert len(distances) == 5 and distances == sorted(distances)
    for name in ("results.json", "curves.png", "samples.txt"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["steps"] == {"ce": 20, "exact": 20, "sampled": 20}
    assert len(saved["runs"]) == 3


@pytest.mark.parametrize("corpus, tokens", [("pydoc", "words"), ("stdlib", "code")])
def test_transformer_lm_builtin_corpus_loads(corpus, tokens):
    import small_lm

    text = small_lm.embedded_corpus() if corpus == "pydoc" else small_lm.stdlib_corpus()
    assert len(text) > (100_000 if corpus == "pydoc" else 5_000_000)
    vectorizer = small_lm.build_vocabulary(text[:50_000], 500, tokens)
    ids = small_lm.encode(vectorizer, text[50_000:60_000])
    vocab = vectorizer.get_vocabulary()
    assert ids.min() >= 1 and ids.max() < len(vocab)
    # Same tokens as the regex (the pilot's for words; out-of-vocabulary maps to id 1).
    expected = small_lm.tokenize(text[50_000:60_000], tokens)
    index = {w: i for i, w in enumerate(vocab)}
    assert [index.get(t, 1) for t in expected][:300] == ids.tolist()[:300]


def test_transformer_lm_steps_per_run():
    import transformer_lm

    assert transformer_lm.parse_steps("30", ["ce", "exact"]) == {"ce": 30, "exact": 30}
    assert transformer_lm.parse_steps("exact=5,sampled=25", ["exact", "sampled"]) == {
        "exact": 5,
        "sampled": 25,
    }
    with pytest.raises(SystemExit, match="sampled"):
        transformer_lm.parse_steps("exact=5", ["exact", "sampled"])


def test_cifar10_quick_on_shared_images(tmp_path):
    import cifar10

    archive = shared_data_path("cifar10-images.tar.gz")
    out = tmp_path / "cifar"
    summary = cifar10.main(
        ["--data-dir", archive, "--quick", "--limit", "600", "--out", str(out), "--verbose", "0"]
    )
    runs = summary["runs"]
    assert [r["kind"] for r in runs] == ["ce", "exact", "sampled"]
    for r in runs:
        assert r["train_loss"][-1] < r["train_loss"][0], r["name"]
        assert 0.0 <= r["test_accuracy"] <= 1.0
    assert summary["pixel_linear_harmonic_test_accuracy"] > 0.12  # above chance on 10 classes
    for name in ("results.json", "curves.png", "centers.png"):
        assert (out / name).stat().st_size > 0


def test_cifar10_confidence_auroc_counts_pairs_with_ties_as_half():
    import cifar10_confidence

    rng = np.random.default_rng(0)
    known, unknown = rng.integers(0, 6, 40), rng.integers(2, 9, 25)  # many ties
    pairs = unknown[:, None] - known[None, :]
    expected = np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0)
    assert cifar10_confidence.auroc(known, unknown) == pytest.approx(expected, abs=1e-12)
    assert cifar10_confidence.auroc(np.zeros(3), np.ones(2)) == 1.0
    assert cifar10_confidence.auroc(np.ones(3), np.zeros(2)) == 0.0


def test_cifar10_confidence_ece_is_the_binned_gap():
    import cifar10_confidence

    confidence = np.array([0.05, 0.1, 0.55, 0.6, 0.95, 1.0])
    correct = np.array([0, 0, 1, 0, 1, 1])
    # 3 bins: [0, 1/3] holds 2 (acc 0, conf 0.075); (1/3, 2/3] 2 (acc 0.5, conf 0.575);
    # (2/3, 1] 2 (acc 1, conf 0.975).
    expected = (2 * 0.075 + 2 * 0.075 + 2 * 0.025) / 6
    got = cifar10_confidence.expected_calibration_error(confidence, correct, bins=3)
    assert got == pytest.approx(expected, abs=1e-12)
    assert cifar10_confidence.expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0


def test_cifar10_confidence_quick_on_shared_images(tmp_path):
    import cifar10_confidence

    archive = shared_data_path("cifar10-images.tar.gz")
    out = tmp_path / "conf"
    args = ["--data-dir", archive, "--quick", "--limit", "400", "--seeds", "3"]
    summary = cifar10_confidence.main([*args, "--out", str(out), "--verbose", "0"])
    (row,) = summary["rows"]
    assert row["seed"] == 3
    for key, _ in cifar10_confidence.COLUMNS:
        assert 0.0 <= row[key] <= 1.0, key
    assert summary["table"].count("\n") == 3  # header, rule, one seed, mean
    assert (out / "confidence.png").stat().st_size > 0


def test_cifar10_confidence_splits_the_held_out_classes():
    import cifar10_confidence

    y = np.arange(10, dtype=np.int32).repeat(2)
    x = y.reshape(-1, 1, 1, 1) * np.ones((1, 32, 32, 3), np.uint8)
    (xt, yt), (xk, yk), xu = cifar10_confidence.split_classes(((x, y), (x, y)), [3, 9])
    assert sorted(set(yt)) == list(range(8)) and len(xt) == 16
    assert sorted(set(xu[:, 0, 0, 0])) == [3, 9]
    np.testing.assert_array_equal(yk, yt)  # relabelled alike in train and test
    assert list(xk[yk == 3, 0, 0, 0]) == [4, 4]  # class 4 is the 4th known class


@pytest.mark.parametrize("layout", ["batches_py"])
def test_cifar10_reads_cifar_batches_py(tmp_path, layout):
    import pickle

    import numpy as np

    import cifar10

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(rng.integers(0, 10, 20))}, f)
    (xt, yt), (xv, yv) = cifar10.load_cifar10(str(tmp_path))
    assert xt.shape == (100, 32, 32, 3) and yt.shape == (100,) and xv.shape == (20, 32, 32, 3)
    with open(root / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    np.testing.assert_array_equal(xt[0], first.reshape(3, 32, 32).transpose(1, 2, 0))


def test_summarize_runs_tables(tmp_path):
    import summarize_runs

    def write(name, seed, lr_h, runs):
        path = tmp_path / f"{name}.json"
        config = {"seed": seed, "lr_ce": 1e-3, "lr_harmonic": lr_h}
        path.write_text(json.dumps({"config": config, "runs": runs}))
        return str(path)

    def run(kind, loss, tps):
        names = {"ce": "cross-entropy", "exact": "exact harmonic", "sampled": "sampled harmonic"}
        return {
            "kind": kind,
            "name": names[kind],
            "final_val_loss": loss,
            "tokens_per_second": tps,
            "steps": [0, 10],
            "val_loss": [9.0, loss],
        }

    a = write(
        "a", 0, 3e-3, [run("ce", 4.9, 10.0), run("exact", 5.1, 10.0), run("sampled", 5.2, 20.0)]
    )
    b = write("b", 1, 1e-2, [run("exact", 5.3, 10.0), run("sampled", 5.3, 30.0)])
    lr = summarize_runs.main(["lr", a, b, "--out", str(tmp_path / "lr.png")])
    assert "| exact harmonic | - | **5.100** | 5.300 |" in lr and (tmp_path / "lr.png").exists()
    seeds = summarize_runs.main(["seeds", a, b, "--out", str(tmp_path / "seeds.png")])
    assert (tmp_path / "seeds.png").exists()
    assert "| 0 | 5.100 | 5.200 | +0.100 |" in seeds
    assert "**+0.050** | **2.50x** |" in seeds


def test_lm_dropout_is_bernoulli_fresh_per_step_and_compiles():
    import numpy as np
    import tensorflow as tf

    import small_lm

    layer = small_lm.Dropout(0.25, seed=3)
    x = tf.ones([200, 500])
    step = tf.function(lambda: layer(x, training=True), jit_compile=True)
    a, b = step().numpy(), step().numpy()
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    # 100,000 entries: the dropped fraction is 0.25 +- 0.0014 (one sigma).
    assert abs((a == 0).mean() - 0.25) < 0.007
    assert abs((b == 0).mean() - 0.25) < 0.007
    assert 0.05 < ((a == 0) != (b == 0)).mean()  # a fresh mask every step
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    with pytest.raises(ValueError, match="noise_shape"):
        small_lm.Dropout(0.1, noise_shape=(None, 1))


def test_lm_attention_dropout_is_the_example_dropout_and_saves(tmp_path):
    import keras
    import numpy as np

    import small_lm

    model, _ = small_lm.build_lm(50, 8, "harmonic", num_layers=1, seed=0)
    attention = model.get_layer("block0_attention")
    assert isinstance(attention._dropout_layer, small_lm.Dropout)
    tokens = np.arange(16).reshape(2, 8) % 50
    path = tmp_path / "lm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("block0_attention")._dropout_layer, small_lm.Dropout)
    np.testing.assert_allclose(loaded.predict(tokens, verbose=0), model.predict(tokens, verbose=0))


def test_minimal_lm_runs_and_learns():
    import math

    import minimal_lm

    val_loss = minimal_lm.main(["--steps", "20"])
    assert math.isfinite(val_loss) and val_loss < math.log(2000) - 1.0  # well below uniform


def test_finetune_lm_quick_on_tiny_shakespeare(tmp_path):
    pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
    import finetune_lm

    out = tmp_path / "finetune"
    result = finetune_lm.main(
        ["--text", shared_data_path("tinyshakespeare.txt"), "--quick", "--out", str(out)]
    )
    for name in ("cross-entropy", "harmonic"):
        curve = result["curves"][name]
        assert curve[-1][1] < curve[0][1], (name, curve)
        assert len(result["generations"][name]) == 3
        # generate() with stop_token_ids="auto" stops at end-of-text, not at once at padding.
        assert any(text.strip() for text in result["generations"][name]), result["generations"]
    assert (out / "finetune.png").stat().st_size > 0
    assert json.loads((out / "result.json").read_text())["vocab"] == 512


def test_finetune_tokenizer_keeps_padding_apart_from_end_of_text():
    pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
    import finetune_lm

    text = open(shared_data_path("tinyshakespeare.txt"), encoding="utf-8").read()[:20_000]
    tokenizer = finetune_lm.train_bpe(text, 300)
    assert tokenizer.pad_token_id == tokenizer.token_to_id(finetune_lm.PAD) == 0
    assert tokenizer.end_token_id == tokenizer.token_to_id(finetune_lm.END) != 0


def test_finetune_lm_lora_quick(tmp_path, capsys):
    pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
    import finetune_lm

    out = tmp_path / "lora"
    args = ["--text", shared_data_path("tinyshakespeare.txt"), "--quick", "--out", str(out)]
    args += ["--cache", str(tmp_path / "cache"), "--harmonic-loss", "exact", "--calibrate"]
    result = finetune_lm.main([*args, "--lora", "4", "--seeds", "1,2"])
    assert sorted(result["runs"]) == [1, 2]
    for run in result["runs"].values():
        for name in ("cross-entropy", "harmonic"):
            curve = run["curves"][name]
            assert curve[-1][1] < curve[0][1], (name, curve)
    assert result["table"].count("\n") == 4  # header, rule, two seeds, mean
    # A second command reads the cached checkpoint: the same step-0 losses, no pretraining.
    assert len(list((tmp_path / "cache").glob("*.weights.h5"))) == 1
    capsys.readouterr()
    again = finetune_lm.main([*args, "--lora", "4", "--seeds", "1"])
    assert "pretrained checkpoint from" in capsys.readouterr().out
    for name in ("cross-entropy", "harmonic"):
        assert again["runs"][1]["curves"][name][0] == result["runs"][1]["curves"][name][0]
    table = finetune_lm.main(["--summarize", str(out / "result.json"), "--out", str(out)])
    assert "| LoRA 4, centers frozen | calibrated | exact | 1 |" in table["table"], table
    assert (out / "switch_study.png").stat().st_size > 0


def test_finetune_lora_trains_the_centers_only_when_asked():
    pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
    import keras_hub

    import finetune_lm

    def trainable(centers):
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
            max_sequence_length=8,
        )  # fmt: skip
        finetune_lm.enable_lora(backbone, 2, centers)
        return {v.path for v in backbone.trainable_variables}

    frozen, trained = trainable("frozen"), trainable("trainable")
    assert all("lora" in path for path in frozen), frozen
    assert trained - frozen == {"token_embedding/embeddings"}, trained - frozen


def test_algorithmic_quick(tmp_path):
    import algorithmic

    result = algorithmic.main(["--quick", "--out", str(tmp_path / "alg")])
    runs, _ = result["runs"]
    assert {(r["model"], r["head"]) for r in runs} == {
        (m, h) for m in ("mlp", "transformer") for h in ("standard", "harmonic")
    }
    for run in runs:
        assert run["seeds"] == [0, 52]  # the released seeds, in order
        assert all(0.0 <= e <= 1.0 + 1e-9 for e in run["explained_variance_top2"])
        assert np.asarray(run["pca"]).shape == (2, 31, 2)
        assert len(run["final_test_accuracy"]) == 2
    assert result["table"].count("\n") == 5  # header, rule, 4 rows
    assert (tmp_path / "alg" / "pca.png").stat().st_size > 0
    again = algorithmic.main(["--quick", "--out", str(tmp_path / "alg")])  # resumes: nothing new
    assert again["runs"] == result["runs"]
    folder = str(tmp_path / "alg")  # an ablation table: a row per folder and selected run
    pick = ["--tasks", "modular_addition", "--models", "mlp"]
    table = algorithmic.main(["--summarize", folder, folder, *pick])["table"]
    assert table.count("\n| alg | modular_addition | mlp |") == 4


def _train(model, head, seeds, fractions, epochs=2, task="modular_addition"):
    import algorithmic

    args = algorithmic.parse_args(["--epochs", str(epochs)])
    trainer, accuracy, _ = algorithmic.train_config(task, model, head, args, seeds, fractions)
    return {k: v.numpy() for k, v in trainer.weights.items()}, accuracy


@pytest.mark.parametrize(
    "model,head", [("mlp", "harmonic"), ("mlp", "standard"), ("transformer", "harmonic")]
)
def test_a_stacked_seed_trains_as_it_does_alone(model, head):
    """Seed 52 in a stack of three ends where seed 52 alone ends (its own shuffles and, in the
    transformer, dropout masks): the seeds do not mix. Seed 0 ends elsewhere (the check can
    fail)."""
    stacked, acc_stacked = _train(model, head, [0, 52, 105], [0.8] * 3)
    alone, acc_alone = _train(model, head, [52], [0.8])
    for k in alone:  # 1e-4: the attention's key bias has a zero gradient up to rounding, which
        # Adam's normalisation turns into lr-sized steps of either sign in both runs
        np.testing.assert_allclose(stacked[k][1], alone[k][0], atol=1e-4, err_msg=k)
    np.testing.assert_allclose(acc_stacked[:, 1], acc_alone[:, 0], atol=1e-6)
    assert np.abs(stacked["table"][0] - alone["table"][0]).max() > 0.05


def test_a_smaller_train_set_in_the_stack_trains_as_it_does_alone():
    """Train fractions stack too: the 0.1 run takes 4 steps an epoch while the 0.9 run takes 29,
    and its weights, moments and step count stay put in the other 25 (per-run AdamW steps)."""
    stacked, _ = _train("mlp", "harmonic", [66, 66], [0.9, 0.1])
    alone, _ = _train("mlp", "harmonic", [66], [0.1])
    for k in alone:
        np.testing.assert_allclose(stacked[k][1], alone[k][0], atol=2e-5, err_msg=k)


def test_the_stacked_harmonic_mlp_trains_as_a_keras_model_with_the_package_head():
    """The toy MLP built from Keras layers and ``HarmonicLMHead`` (tied, eta 2, eps 1e-4),
    fitted by ``model.fit`` with Keras's AdamW on the same batches, ends at the stacked
    trainer's weights for that seed (Keras puts AdamW's epsilon inside the bias correction,
    PyTorch outside: a 1e-7-relative difference)."""
    import keras

    import harmonic_tf as ht

    import algorithmic
    import toy_data
    import toy_models

    seed, epochs = 52, 2
    data = toy_data.split(toy_data.modular_addition(seed), seed)
    args = algorithmic.parse_args(["--epochs", str(epochs)])
    trainer, _, _ = algorithmic.train_config(
        "modular_addition", "mlp", "harmonic", args, [seed], [0.8]
    )
    cfg = trainer.cfg
    start = {k: v[0] for k, v in toy_models.initial_weights(cfg, [seed]).items()}
    tokens = keras.Input([2], dtype="int32")
    table = keras.layers.Embedding(31, 16)
    first, second = keras.layers.Dense(100, activation="silu"), keras.layers.Dense(16)
    h = second(first(keras.layers.Flatten()(table(tokens))))
    head = ht.HarmonicLMHead(tied_embedding=table, eta=2.0, eps=1e-4)
    model = ht.HarmonicModel(tokens, head(h))
    table.set_weights([start["table"]])
    first.set_weights([start["in_w"], start["in_b"]])
    second.set_weights([start["out_w"], start["out_b"]])
    model.compile(keras.optimizers.AdamW(2e-3, weight_decay=0.01, epsilon=1e-8), ht.HarmonicLoss())
    order = trainer.orders(0, epochs)[:, 0].reshape(-1)
    model.fit(
        data.train_tokens[order], data.train_labels[order], batch_size=32, shuffle=False, verbose=0
    )
    trained = trainer.weights["table"].numpy()[0]
    np.testing.assert_allclose(table.get_weights()[0], trained, atol=5e-5)
    assert np.abs(trained - start["table"]).max() > 0.01  # it did train


def test_the_stacked_adamw_is_pytorchs_adamw():
    """Three steps against float64 PyTorch AdamW (``torch.optim.AdamW``'s documented update:
    decay ``p *= 1 - lr wd``, then ``p -= lr m_hat / (sqrt(v_hat) + eps)``), with tiny
    gradients where the epsilon's place matters; the second run sits out step 2."""
    import tensorflow as tf

    from algorithmic import AdamW

    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(2, 3))
    grads = [rng.normal(size=(2, 3)) * 10.0 ** -rng.integers(3, 9, (2, 3)) for _ in range(3)]
    weights = {"p": tf.Variable(p0.astype("float32"))}
    opt = AdamW(weights, lr=0.1, weight_decay=0.5)
    active = [[True, True], [True, False], [True, True]]
    for g, on in zip(grads, active, strict=True):
        opt.apply(weights, {"p": tf.constant(g, tf.float32)}, tf.constant(on))
    for run in range(2):
        p, m, v, t = p0[run].copy(), 0.0, 0.0, 0
        for g, on in zip(grads, active, strict=True):
            if not on[run]:
                continue
            t += 1
            p *= 1 - 0.1 * 0.5
            m = 0.9 * m + 0.1 * g[run]
            v = 0.999 * v + 0.001 * g[run] ** 2
            p -= 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(weights["p"].numpy()[run], p, rtol=1e-5, atol=1e-6)


def test_the_datasets_are_the_released_tasks():
    """Each task's labels follow its rule, and the split is 800/200 (460/116 of 576)."""
    import toy_data

    t = toy_data.lattice(0)
    pts = np.stack([t.tokens // 5, t.tokens % 5], -1)
    label = np.stack([t.labels // 5, t.labels % 5], -1)
    np.testing.assert_array_equal(label, -pts[:, 0] + pts[:, 1] + pts[:, 2])
    m = toy_data.modular_addition(52)
    np.testing.assert_array_equal(m.labels, m.tokens.sum(1) % 31)
    e = toy_data.equivalence(105)
    np.testing.assert_array_equal(e.labels == 40, (e.tokens[:, 0] - e.tokens[:, 1]) % 5 == 0)
    g = toy_data.genealogy(0)
    parent = g.tokens[:, 1] == 127
    np.testing.assert_array_equal(g.labels[parent], g.tokens[parent, 0] // 2)
    assert g.vocab_size == 130 and g.pca_rows == slice(1, 127)
    p = toy_data.permutations(0)
    assert len(p.labels) == 576 and p.vocab_size == 24
    assert len(toy_data.split(p, 0).train_labels) == 460
    s = toy_data.split(m, 52)
    assert len(s.train_labels) == 800 and len(s.test_labels) == 200
    assert toy_data.paper_seeds()[:3] == [0, 52, 105] and toy_data.paper_seeds()[-1] == 1000
    np.testing.assert_array_equal(toy_data.modular_addition(52).tokens, m.tokens)  # seeded


def test_grokking_epoch_is_the_first_epoch_that_stays_above():
    from algorithmic import grokking_epoch

    assert grokking_epoch([0.1, 0.95, 0.5] + [0.95] * 20) == 4
    assert grokking_epoch([0.1] * 30) is None
    assert grokking_epoch([0.5, 0.95, 0.96]) == 2  # held to the end


def test_finetune_vlm_quick_on_cifar10(tmp_path):
    pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
    import finetune_vlm

    tokenizer = finetune_vlm.tokenizer()
    for name in finetune_vlm.CLASSES:  # the answer accuracy reads one token per class name
        assert len(np.asarray(tokenizer(name))) == 1, name
    out = tmp_path / "vlm"
    data = shared_data_path("cifar10-images.tar.gz")
    result = finetune_vlm.main(["--data", data, "--quick", "--out", str(out)])
    for name in ("cross-entropy", "harmonic"):
        curve = result["runs"][0][name]
        assert curve[-1][1] < curve[0][1], (name, curve)  # held-out response loss falls
    assert (out / "finetune_vlm.png").stat().st_size > 0
    assert "harmonic - CE" in json.loads((out / "result.json").read_text())["table"]


def test_the_main_job_says_what_its_sampled_run_trained_with():
    """At the main job's size (2,048 tokens a step, V = 3,000, D = 128) the sampled estimate's
    matmuls are 55% of the exact loss's: it samples, and the output gives the speed ratio; at
    the quick run's (512 tokens, V = 500) HarmonicLoss trains it exactly, and the output says so."""
    import transformer_lm

    args = transformer_lm.parse_args([])
    counts = np.ones(args.vocab_size)
    runs = [
        {"kind": "exact", "tokens_per_second": 35_000},
        {"kind": "sampled", "tokens_per_second": 38_500},
    ]
    note = transformer_lm.estimator_note(runs, args, counts)
    assert "trained at 1.10x the exact run's tokens/s" in note
    assert "55% of the exact loss's at 2,048 tokens a step and V = 3,000" in note
    quick = transformer_lm.parse_args(["--quick"])
    note = transformer_lm.estimator_note(runs, quick, np.ones(quick.vocab_size))
    assert "The sampled run trained with the exact loss" in note and "V = 500" in note
    assert transformer_lm.estimator_note(runs[:1], args, counts) == ""
