"""Every decoder-only keras-hub causal-LM family under a harmonic head: tiny random-initialised
configs built offline, through a sampled fit under XLA, the exact evaluate (against float64
NumPy from predict), greedy generate (against the harmonic argmax), score and a .keras reload.
docs/keras-hub.md lists the families and the ones that cannot work, with the reason."""

from pathlib import Path

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import harmonic_tf as ht  # noqa: E402
from harmonic_tf.keras.hub import HarmonicCausalLM, causal_lm_class  # noqa: E402

from reference import harmonic_logits_numpy, weighted_loss_numpy  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.own_process]


V, S, D = 64, 8, 16
M = keras_hub.models
GQA = dict(
    num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=D, intermediate_dim=32
)


def _llama_like(cls, **extra):
    return lambda: cls(vocabulary_size=V, **GQA, **extra)


SMOL = dict(
    vocabulary_size=V, hidden_dim=D, intermediate_dim=32, num_layers=2, num_attention_heads=2,
    num_key_value_heads=1, attention_bias=False, attention_dropout=0.0,
    rope_layer_enabled_list=[True, False], layer_types=["full_attention"] * 2, mlp_bias=False,
    layer_norm_epsilon=1e-6, max_position_embeddings=32, rope_theta=10000.0,
    partial_rotary_factor=1.0,
)  # fmt: skip
QWEN35 = dict(
    vocabulary_size=V, num_layers=2, num_query_heads=2, num_key_value_heads=1, head_dim=8,
    hidden_dim=D, layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
    linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8,
)  # fmt: skip


FAMILIES = {
    "gpt2": lambda: M.GPT2Backbone(
        vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=D, intermediate_dim=32,
        max_sequence_length=S + 4,
    ),
    "gpt_neox": lambda: M.GPTNeoXBackbone(
        vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=D, intermediate_dim=32,
        max_sequence_length=S + 4,
    ),
    "opt": lambda: M.OPTBackbone(
        vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=D, intermediate_dim=32,
        max_sequence_length=S + 4,
    ),
    "bloom": lambda: M.BloomBackbone(
        vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=D, intermediate_dim=32
    ),
    "falcon": lambda: M.FalconBackbone(
        vocabulary_size=V, num_layers=1, num_attention_heads=2, hidden_dim=D,
        intermediate_dim=32, max_sequence_length=S + 4,
    ),
    "llama_tied": _llama_like(M.LlamaBackbone, tie_word_embeddings=True),
    "llama_untied": _llama_like(M.LlamaBackbone, tie_word_embeddings=False),
    "llama3": _llama_like(M.Llama3Backbone),
    "mistral": _llama_like(M.MistralBackbone),
    "mixtral": _llama_like(M.MixtralBackbone, num_experts=2),
    "qwen_tied": _llama_like(M.QwenBackbone, tie_word_embeddings=True),
    "qwen_untied": _llama_like(M.QwenBackbone, tie_word_embeddings=False),
    "qwen3": _llama_like(M.Qwen3Backbone, head_dim=8),
    "qwen_moe": _llama_like(
        M.QwenMoeBackbone, moe_intermediate_dim=16, shared_expert_intermediate_dim=16,
        num_experts=4, top_k=2,
    ),
    "qwen3_moe": _llama_like(
        M.Qwen3MoeBackbone, moe_intermediate_dim=16, num_experts=4, top_k=2, head_dim=8
    ),
    "phi3": _llama_like(M.Phi3Backbone),
    "gemma": lambda: M.GemmaBackbone(
        vocabulary_size=V, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=D, intermediate_dim=32, head_dim=8,
    ),
    "qwen2": _llama_like(M.Qwen2Backbone),
    "smollm": lambda: M.SmolLMBackbone(**SMOL),
    "smollm3": lambda: M.SmolLM3Backbone(**SMOL),
    "gpt_oss": lambda: M.GptOssBackbone(
        vocabulary_size=V, num_layers=1, num_query_heads=2, hidden_dim=D, intermediate_dim=32,
        num_key_value_heads=1, num_experts=2, top_k=1, head_dim=8,
    ),
    "gemma3_text": lambda: M.Gemma3Backbone(vocabulary_size=V, image_size=16, head_dim=8, **GQA),
    "gemma3_vision": lambda: M.Gemma3Backbone(
        vocabulary_size=V, image_size=16, head_dim=8, **GQA,
        vision_encoder=M.Gemma3VisionEncoder(
            image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1,
            intermediate_dim=16, output_dim=D, pool_size=2,
        ),
    ),
    "gemma4": lambda: M.Gemma4Backbone(vocabulary_size=V, image_size=16, head_dim=8, **GQA),
    "qwen3_5": lambda: M.Qwen3_5Backbone(intermediate_dim=32, **QWEN35),
    "qwen3_5_moe": lambda: M.Qwen3_5MoeBackbone(
        moe_intermediate_dim=16, shared_expert_intermediate_size=16, num_experts=4, top_k=2,
        **QWEN35,
    ),
    "paligemma": lambda: M.PaliGemmaBackbone(
        vocabulary_size=V, image_size=16, head_dim=8, vit_patch_size=8, vit_num_heads=2,
        vit_hidden_dim=8, vit_num_layers=1, **GQA,
    ),
    "blip2": lambda: M.BLIP2Backbone(
        vision_encoder=M.BLIP2VisionEncoder(
            image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
            intermediate_dim=16, use_patch_bias=True, use_class_token=True, use_mha_bias=True,
            use_mlp_bias=True, dropout_rate=0.0, layer_norm_epsilon=1e-6, initializer_range=0.02,
        ),
        qformer=M.BLIP2QFormer(
            num_query_tokens=2, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
            vision_dim=8, cross_attention_frequency=1, dropout=0.0, layer_norm_epsilon=1e-6,
        ),
        language_model=M.BLIP2CustomOPT(
            vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=D, intermediate_dim=32,
            num_query_tokens=2, dropout=0.0, max_sequence_length=32, qformer_hidden_dim=8,
        ),
    ),
}  # fmt: skip

# Families a harmonic head cannot serve, with the reason its error gives.
REFUSED = {
    "rwkv7": (
        lambda: M.RWKV7Backbone(
            hidden_size=D, head_size=8, num_layers=1, vocabulary_size=V, intermediate_dim=32,
            gate_lora=8, mv_lora=8, aaa_lora=8, decay_lora=8,
        ),
        "its backbone returns logits",
    ),
    "gemma3n": (
        lambda: M.Gemma3nBackbone(
            text_vocab_size=V, text_hidden_size=D, num_hidden_layers=1, pad_token_id=0,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, intermediate_size=[32],
            hidden_activation="gelu_approximate", layer_types=["full_attention"],
            sliding_window=4, rope_theta=10000.0, max_position_embeddings=32,
            vocab_size_per_layer_input=V, hidden_size_per_layer_input=2, altup_num_inputs=2,
            laurel_rank=1,
        ),
        "bare matmul",
    ),
    "parseq": (
        lambda: M.PARSeqBackbone(
            image_encoder=M.ViTBackbone(
                image_shape=(16, 16, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                mlp_dim=16, use_class_token=False,
            ),
            vocabulary_size=V, max_label_length=8, decoder_hidden_dim=8, num_decoder_layers=1,
            num_decoder_heads=2, decoder_mlp_dim=16,
        ),
        "its backbone returns logits",
    ),
}  # fmt: skip

# keras-hub's own behaviour, seen on the stock CausalLM too; the tests check it is still there.
# Cached decoding of Qwen 3.5's linear-attention layers does not reproduce the model's own
# full-sequence argmax (stock too; at the first token already for some prompts).
CACHED_DECODING_DIFFERS_IN_KERAS_HUB = {"qwen3_5", "qwen3_5_moe"}
# Gemma 3's generate() needs its preprocessor (without one it fails on `images=None`, stock
# too); the matrix runs its decoding loop, generate_step, directly.
GENERATE_NEEDS_PREPROCESSOR = {"gemma3_text", "gemma3_vision"}
# XLA compiles Qwen 3.5's linear-attention scan for about 2 minutes per model on 2 cores; these
# fit in graph mode (the other 26 configurations cover XLA).
SLOW_UNDER_XLA = {"qwen3_5", "qwen3_5_moe"}


# keras-hub's own bugs, seen on its stock CausalLM too; the test checks they are still there.
RELOAD_FAILS_IN_KERAS_HUB = {
    "llama_tied": "LlamaBackbone(tie_word_embeddings=True) does not reload from a .keras file",
}


def _inputs(lm, ids, mask, response_from=None) -> dict:
    """The family's inputs for token ids ``[B, S]``: position ids, images and vision masks
    where its model takes them (one random 16x16 image per sequence)."""
    spec, batch = lm.input, ids.shape[0]
    x = {"token_ids": ids, "padding_mask": mask}
    if "position_ids" in spec:
        x["position_ids"] = np.arange(S)[None].repeat(batch, 0)
    if "images" in spec:
        shape = (batch, *(d or 1 for d in spec["images"].shape[1:]))
        x["images"] = np.random.default_rng(1).uniform(size=shape).astype("float32")
    if "response_mask" in spec:  # PaliGemma: the prompt attends both ways, the response causally
        start = 0 if response_from is None else response_from
        x["response_mask"] = (np.arange(S) >= start)[None].repeat(batch, 0) & mask
    if "vision_mask" in spec:  # Gemma 3: the image's tokens at positions 1..n
        n = lm.backbone.vision_encoder.num_vision_tokens_per_image
        x["vision_indices"] = np.tile(np.arange(1, n + 1), (batch, 1)).astype("int32")
        x["vision_mask"] = np.zeros_like(mask)
        x["vision_mask"][:, 1 : n + 1] = True
    return x


def _batches(lm, n=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (n, S + 1)).astype("int32")
    mask = np.ones_like(ids, bool)
    mask[: n // 2, -2:] = False  # some padded sequences
    ids = np.where(mask, ids, 0)
    return _inputs(lm, ids[:, :-1], mask[:, :-1]), ids[:, 1:], mask[:, 1:].astype("float32")


PROMPT = 6  # tokens; Gemma 3's image takes positions 1-4


def _greedy(lm, family, x):
    """``(generated token ids, the model's own logits of them)``: keras-hub's greedy decoding
    from a ``PROMPT``-token prefix of two sequences, and ``predict`` on its output."""
    ids = np.pad(x["token_ids"][4:6, :PROMPT], [[0, 0], [0, S - PROMPT]])
    mask = np.arange(S)[None, :].repeat(2, 0) < PROMPT
    prompt = _inputs(lm, ids, mask, response_from=PROMPT)
    if family in GENERATE_NEEDS_PREPROCESSOR:
        out = lm.generate_step({k: tf.constant(v) for k, v in prompt.items()}, None)
    else:
        out = lm.generate(prompt, stop_token_ids=None)
    out = np.asarray(out["token_ids"])
    full = _inputs(lm, out, np.ones_like(out, bool), response_from=PROMPT)
    return out[:, PROMPT:], np.asarray(lm(full))[:, PROMPT - 1 : -1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_fits_evaluates_generates_scores_and_reloads(family, tmp_path):
    keras.utils.set_random_seed(0)
    lm = HarmonicCausalLM(FAMILIES[family](), eta=2.0 * D)
    assert isinstance(lm, causal_lm_class(type(lm.backbone)))  # the family's own code
    head = lm.harmonic_head
    lm.compile(
        keras.optimizers.Adam(1e-3),
        loss=ht.HarmonicLoss(sampled=ht.SampledOptions(k=8), seed=0, exact_fallback=False),
        weighted_metrics=[ht.HarmonicAccuracy()],
        sampler="greedy",
        jit_compile=family not in SLOW_UNDER_XLA,
    )
    x, y, sw = _batches(lm)
    before = head.centers_variable.numpy().copy()
    lm.fit(x, y, sample_weight=sw, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(head.centers_variable.numpy(), before)  # the centers trained
    logits = np.asarray(lm(x))  # eager: predict's XLA compile is the fit's twin (test_hub.py)
    assert logits.shape == (8, S, V)  # the positions stock returns (PaliGemma: text only)
    hidden = lm.hidden_states(x)
    ref = harmonic_logits_numpy(hidden, head.centers, 2.0 * D)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-3)
    # The stock model on the same backbone and inputs reads out the same hidden states with
    # the same matrix: its dot-product logits are those hidden states times the centers.
    stock = causal_lm_class(type(lm.backbone))(backbone=lm.backbone, preprocessor=None)
    dot = np.einsum("bsd,vd->bsv", np.asarray(hidden, np.float64), np.asarray(head.centers))
    np.testing.assert_allclose(stock(x), dot, rtol=1e-4, atol=1e-4)
    logs = lm.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], weighted_loss_numpy(ref, y, sw), rtol=1e-4)
    if set(lm.input) == {"token_ids", "padding_mask"}:
        np.testing.assert_allclose(lm.score(x["token_ids"], x["padding_mask"]), logits, atol=1e-3)

    tokens, own_logits = _greedy(lm, family, x)
    if family not in CACHED_DECODING_DIFFERS_IN_KERAS_HUB:
        np.testing.assert_array_equal(tokens, own_logits.argmax(-1))

    path = str(tmp_path / f"{family}.keras")
    lm.save(path)
    if family in RELOAD_FAILS_IN_KERAS_HUB:
        with pytest.raises(ValueError, match="could not be loaded"):
            keras.models.load_model(path)
        return
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(lm)
    np.testing.assert_allclose(loaded(x), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(CACHED_DECODING_DIFFERS_IN_KERAS_HUB))
def test_stock_cached_decoding_still_differs_from_its_own_argmax(family):
    keras.utils.set_random_seed(0)
    backbone = FAMILIES[family]()
    lm = causal_lm_class(type(backbone))(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    tokens, own_logits = _greedy(lm, family, _batches(lm)[0])
    assert not (tokens == own_logits.argmax(-1)).all()


def test_a_logit_cap_after_the_read_out_is_refused():
    with pytest.raises(ValueError, match="after its read-out"):
        HarmonicCausalLM(FAMILIES["gemma4"](), final_logit_cap=30.0)


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_families_without_hidden_states_are_refused_with_the_reason(family):
    make, reason = REFUSED[family]
    with pytest.raises(ValueError, match=reason):
        HarmonicCausalLM(make())


NOTES = {
    **{f: "keras-hub's cached decoding differs from the model's own argmax (stock too; checked); fit without XLA (slow to compile)" for f in CACHED_DECODING_DIFFERS_IN_KERAS_HUB},
    **{f: "`generate()` needs its preprocessor (stock too); the matrix runs `generate_step`" for f in GENERATE_NEEDS_PREPROCESSOR},
    **{f: reason + " (stock too; checked)" for f, reason in RELOAD_FAILS_IN_KERAS_HUB.items()},
}  # fmt: skip
DOCS = Path(__file__).parent.parent / "docs" / "keras-hub.md"
TABLE = ("<!-- family table: tests/test_hub_families.py -->", "<!-- end of family table -->")


def family_table() -> str:
    """The docs' table of families, from what this file runs."""
    rows = ["| family | runs the code of | inputs | notes |", "|---|---|---|---|"]
    for name in sorted(FAMILIES):
        backbone = FAMILIES[name]()
        inputs = ", ".join(f"`{k}`" for k in backbone.input)
        family = causal_lm_class(type(backbone)).__name__
        rows.append(f"| {name} | `{family}` | {inputs} | {NOTES.get(name, '')} |")
    for name in sorted(REFUSED):
        make, reason = REFUSED[name]
        try:
            HarmonicCausalLM(make())
        except ValueError as error:
            rows.append(f"| {name} | refused | | {str(error).split(': ', 1)[1]} |")
    return "\n".join(rows)


def test_docs_family_table_is_the_matrix():
    text = DOCS.read_text()
    start, end = text.index(TABLE[0]) + len(TABLE[0]), text.index(TABLE[1])
    assert text[start:end].strip() == family_table(), (
        "docs/keras-hub.md's family table is stale: python tests/test_hub_families.py rewrites it"
    )


if __name__ == "__main__":  # rewrites the docs' table
    text = DOCS.read_text()
    start, end = text.index(TABLE[0]) + len(TABLE[0]), text.index(TABLE[1])
    DOCS.write_text(text[:start] + "\n" + family_table() + "\n" + text[end:])
