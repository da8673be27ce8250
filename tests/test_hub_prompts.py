"""keras-hub's own prompt/response preprocessing under a harmonic head: Gemma 3 (text, and
with an image) and PaliGemma (with an image) take ``{"prompts", "responses", "images"}``, and
their preprocessors' response masks are the sample weights. Fit and evaluate run on the raw
strings and images; the evaluated loss is the float64 harmonic loss of the response tokens
only; ``generate()`` runs with the preprocessor."""

import io

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub", reason="the keras-hub extra is not installed")
spm = pytest.importorskip("sentencepiece", reason="sentencepiece comes with keras-hub")
import keras  # noqa: E402

import harmonic_tf as ht  # noqa: E402
from harmonic_tf.keras.hub import HarmonicCausalLM  # noqa: E402

from reference import harmax_numpy  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.own_process]

D, SEQ = 16, 32
M = keras_hub.models
TEXT = ["the quick brown fox jumps over the lazy dog", "what is in the picture", "a cat"] * 20
IMAGE_TOKENS = ["<img>", "<start_of_image>", "<end_of_image>"]  # Gemma 3's, in its vocabulary
DATA = {
    "prompts": ["<start_of_image> what is it", "<start_of_image> a cat"],
    "responses": ["a lazy dog", "the quick brown fox"],
    "images": [np.full((16, 16, 3), 0.2, "float32"), np.full((16, 16, 3), 0.7, "float32")],
}


def _proto() -> bytes:
    """A SentencePiece model trained on ``TEXT``, with the Gemma tokenizers' special tokens."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT), model_writer=out, vocab_size=60, model_type="bpe",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="<pad>", bos_piece="<bos>",
        eos_piece="<eos>", unk_piece="<unk>", user_defined_symbols=IMAGE_TOKENS,
    )  # fmt: skip
    return out.getvalue()


def _gemma3(vision: bool):
    tokenizer = M.Gemma3Tokenizer(_proto(), has_vision_tokens=vision)
    encoder = None
    if vision:
        encoder = M.Gemma3VisionEncoder(
            image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1,
            intermediate_dim=16, output_dim=D, pool_size=2,
        )  # fmt: skip
    backbone = M.Gemma3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), image_size=16, num_layers=1,
        num_query_heads=2, num_key_value_heads=1, hidden_dim=D, intermediate_dim=32, head_dim=8,
        vision_encoder=encoder,
    )  # fmt: skip
    converter = keras_hub.layers.Gemma3ImageConverter(image_size=(16, 16)) if vision else None
    preprocessor = M.Gemma3CausalLMPreprocessor(
        tokenizer, image_converter=converter, sequence_length=SEQ,
        max_images_per_prompt=int(vision), num_vision_tokens_per_image=4 * int(vision),
    )  # fmt: skip
    return backbone, preprocessor


def _paligemma():
    tokenizer = M.PaliGemmaTokenizer(_proto())
    backbone = M.PaliGemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), image_size=16, num_layers=1,
        num_query_heads=2, num_key_value_heads=1, hidden_dim=D, intermediate_dim=32, head_dim=8,
        vit_patch_size=8, vit_num_heads=2, vit_hidden_dim=8, vit_num_layers=1,
    )  # fmt: skip
    converter = keras_hub.layers.PaliGemmaImageConverter(image_size=(16, 16))
    return backbone, M.PaliGemmaCausalLMPreprocessor(tokenizer, converter, sequence_length=SEQ)


MODELS = {
    "gemma3_text": lambda: _gemma3(vision=False),
    "gemma3_vision": lambda: _gemma3(vision=True),
    "paligemma": _paligemma,
}


def _data(name: str) -> dict:
    if name == "gemma3_text":
        prompts = [p.replace("<start_of_image> ", "") for p in DATA["prompts"]]
        return {"prompts": prompts, "responses": DATA["responses"]}
    if name == "paligemma":  # its image tokens are the backbone's, not in the prompt
        prompts = [p.replace("<start_of_image> ", "") for p in DATA["prompts"]]
        return {**DATA, "prompts": prompts}
    return DATA


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prompt_response_batches_count_only_response_tokens(name):
    keras.utils.set_random_seed(0)
    backbone, preprocessor = MODELS[name]()
    lm = HarmonicCausalLM(backbone, preprocessor, eta=2.0 * D)
    lm.compile(
        keras.optimizers.Adam(1e-3),
        loss=ht.HarmonicLoss(sampled=ht.SampledOptions(k=8), seed=0, exact_fallback=False),
        sampler="greedy",
    )
    data = _data(name)
    lm.fit(data, batch_size=2, epochs=2, verbose=0)  # raw strings and images in

    x, y, weight = (np.asarray(t) if not isinstance(t, dict) else t for t in preprocessor(data))
    tokenizer = preprocessor.tokenizer
    for row, response in enumerate(data["responses"]):  # the weights mark the response only
        expected = [*np.asarray(tokenizer(response)).tolist(), tokenizer.end_token_id]
        assert y[row][weight[row] > 0].tolist() == expected
    head = lm.harmonic_head
    hidden = np.asarray(lm.hidden_states(x)).reshape(-1, D)
    per_token, _, _ = harmax_numpy(
        hidden, np.asarray(head.centers), y.reshape(-1), 2.0 * D, eps=head.eps, reduction="none"
    )
    masked = (per_token * weight.reshape(-1)).sum() / y.size
    everything = per_token.sum() / y.size
    assert abs(everything - masked) > 1e-2  # the prompt's tokens would change the answer
    loss = lm.evaluate(data, batch_size=2, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, masked, rtol=1e-5)

    prompt = {k: v[:1] for k, v in data.items() if k != "responses"}
    out = lm.generate(prompt, max_length=SEQ)  # the family's generate(), preprocessor and all
    assert isinstance(np.asarray(out).reshape(-1)[0], (str, bytes))
