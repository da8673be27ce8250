"""keras-hub causal LMs with a harmonic head (``pip install "harmonic-tf[hub]"``).

:class:`HarmonicCausalLM` wraps any keras-hub causal-LM backbone whose ``token_embedding`` is
the input embedding: the head is tied to it (its ``reverse_embeddings`` when
``tie_weights=False``), so a pretrained model's output matrix becomes the class centers.
Decoding borrows ``call_with_cache`` / ``generate_step`` from the keras-hub ``CausalLM`` of
that backbone (e.g. ``GPT2CausalLM``), reading its final hidden states through the harmonic
head, so ``generate()`` with any keras-hub sampler samples the harmonic distribution.
"""

from __future__ import annotations

import json

import keras
import tensorflow as tf

try:
    import keras_hub
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("harmonic_tf.hub needs keras-hub: pip install 'harmonic-tf[hub]'") from error

from harmonic_tf.keras import _compat
from harmonic_tf.keras.layers import HarmonicLMHead
from harmonic_tf.keras.losses import EVALUATION_CHUNK, HarmonicLoss
from harmonic_tf.keras.metrics import HarmonicAccuracy
from harmonic_tf.keras.models import HarmonicTraining
from harmonic_tf.ops import harmonic_loss

# Presets saved by harmonic-tf 0.1 kept their compile settings in this file; still read.
COMPILE_FILE = "compile.json"


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicCausalLMPreset:
    """The class a :class:`HarmonicCausalLM` preset's ``config.json`` names in place of its
    backbone's. keras-hub's loaders choose a task class by the backbone class alone, so a
    preset naming a stock backbone would load as a stock dot-product model. With this class:
    ``keras_hub.models.CausalLM.from_preset`` finds the preset's ``task.json`` and builds the
    ``HarmonicCausalLM`` (compile settings included); a loader that needs the stock backbone
    (``GPT2CausalLM.from_preset``, ``Backbone.from_preset``) fails with this message.
    The backbone's own config stays in the file (``task.json`` holds it too)."""

    MESSAGE = (
        "This keras-hub preset holds a harmonic-tf HarmonicCausalLM (a harmonic head on its "
        "backbone), not a stock model. Load it with "
        "harmonic_tf.keras.hub.HarmonicCausalLM.from_preset(preset) or "
        "keras_hub.models.CausalLM.from_preset(preset) (with harmonic_tf imported); "
        "HarmonicCausalLM.from_preset(preset).backbone is the backbone."
    )

    def get_config(self) -> dict:  # pragma: no cover - never instantiated
        return {}

    @classmethod
    def from_config(cls, config):
        raise ValueError(cls.MESSAGE)

    @classmethod
    def from_preset(cls, *args, **kwargs):
        raise ValueError(cls.MESSAGE)


def causal_lm_class(backbone_cls: type) -> type:
    """The keras-hub ``CausalLM`` subclass built on ``backbone_cls`` (its decoding code)."""
    found = [
        cls
        for cls in _compat.causal_lm_classes()
        if getattr(cls, "backbone_cls", None) is backbone_cls
        and not issubclass(cls, HarmonicTraining)
    ]
    if not found:
        raise ValueError(
            f"`backbone` ({backbone_cls.__name__}) is not a causal-LM backbone: keras-hub has "
            "no CausalLM for it (an encoder such as BERT reads both directions). "
            "HarmonicCausalLM needs a decoder backbone (GPT-2, Llama, Gemma, ...)."
        )
    return found[0]


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicCausalLM(HarmonicTraining, keras_hub.models.CausalLM):
    """A keras-hub causal LM whose read-out is a :class:`HarmonicLMHead` tied to the backbone's
    token embedding.

    ``fit`` uses the compiled :class:`HarmonicLoss` on the backbone's hidden states (sampled
    or exact chunked), ``evaluate`` the exact chunked loss, ``predict`` and ``score`` return
    harmonic logits, ``generate()`` decodes from them with the compiled keras-hub sampler.
    Batches are keras-hub's ``({"token_ids", "padding_mask"}, labels, sample_weight)``.

    Args:
      backbone: a keras-hub causal-LM backbone (e.g. ``GPT2Backbone``).
      preprocessor: its ``CausalLMPreprocessor``, or ``None``.
      eta, eta_init, eps, frozen_when_saved: of the head (see :class:`HarmonicLMHead`).

    ``compile`` defaults: Adam(2e-5), the exact ``HarmonicLoss()``, weighted
    :class:`HarmonicAccuracy`, ``sampler="top_k"``; the settings survive a ``.keras`` reload
    and a ``save_to_preset`` / ``from_preset`` round trip.

    Example:
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=8)
    >>> lm = HarmonicCausalLM(backbone)
    >>> lm.compile(loss=HarmonicLoss(sampled=SampledOptions(k=8)), sampler="greedy")
    >>> ids = np.arange(16).reshape(2, 8) % 64
    >>> x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    >>> print(lm.predict(x, verbose=0).shape)
    (2, 8, 64)
    """

    backbone_cls = None  # any causal-LM backbone
    preprocessor_cls = None

    def __init__(
        self,
        backbone,
        preprocessor=None,
        eta: float | str | None = None,
        eta_init: float | None = None,
        eps: float = 1e-9,
        frozen_when_saved: bool = False,
        **kwargs,
    ):
        _check_backbone(backbone)
        embedding = backbone.token_embedding
        self.backbone = backbone
        self.preprocessor = preprocessor
        head = HarmonicLMHead(
            tied_embedding=embedding, eta=eta, eta_init=eta_init, eps=eps,
            frozen_when_saved=frozen_when_saved, name="harmonic_head",
        )  # fmt: skip
        inputs = backbone.input
        outputs = head(backbone(inputs))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self._route_to(head)

    def hidden_states(self, x, training: bool = False) -> tf.Tensor:
        return self.backbone(x, training=training)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        sampler="top_k",
        **kwargs,
    ):
        if loss == "auto":
            loss = HarmonicLoss()
        if weighted_metrics == "auto":
            weighted_metrics = [HarmonicAccuracy()]
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            sampler=sampler,
            **kwargs,
        )
        # The sampler stays out of the compile config (it goes in get_config): Keras's
        # clone_model compiles a plain Functional copy with that config, whose compile() has
        # no `sampler`.

    def compile_from_config(self, config):
        restored = getattr(self, "_restored_sampler", None)
        if restored is not None and "sampler" not in config:
            config = {**config, "sampler": restored}
        super().compile_from_config(config)

    @property
    def _decoding_lm(self) -> type:
        """The keras-hub ``CausalLM`` class whose decoding code this model borrows."""
        return causal_lm_class(type(self.backbone))

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """keras-hub's cached decoding step, with harmonic logits from its hidden states."""
        call = _compat.borrowed(self._decoding_lm, "call_with_cache")
        _, hidden, cache = call(self, token_ids, cache, cache_update_index)
        return self.harmonic_head(hidden), hidden, cache

    def _build_cache(self, token_ids):
        return _compat.borrowed(self._decoding_lm, "_build_cache")(self, token_ids)

    def generate_step(self, inputs, stop_token_ids=None):
        return _compat.borrowed(self._decoding_lm, "generate_step")(self, inputs, stop_token_ids)

    def score(
        self,
        token_ids,
        padding_mask=None,
        scoring_mode: str = "logits",
        layer_intercept_fn=None,
        target_ids=None,
    ):
        """Per-token harmonic logits ``[B, S, V]`` (``"logits"``) or exact harmonic losses
        ``[B, S]`` against ``target_ids`` (``"loss"``, chunked: no ``[B, S, V]`` tensor)."""
        if scoring_mode not in ("logits", "loss"):
            raise ValueError(f"`scoring_mode` must be 'logits' or 'loss', got {scoring_mode!r}.")
        if layer_intercept_fn is not None:
            raise ValueError(
                "`layer_intercept_fn` needs the backbone's layer-by-layer code, which differs "
                "per keras-hub model; HarmonicCausalLM.score runs the backbone whole."
            )
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError("scoring_mode='loss' needs `target_ids`.")
        token_ids = tf.convert_to_tensor(token_ids)  # NumPy or lists, as keras-hub accepts
        if padding_mask is None:
            padding_mask = tf.ones(tf.shape(token_ids)[:2], tf.bool)
        padding_mask = tf.convert_to_tensor(padding_mask)
        hidden = self.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
        head = self.harmonic_head
        if scoring_mode == "logits":
            return head(hidden)
        loss = self.harmonic_loss
        chunk = loss.evaluation_chunk_size if loss is not None else EVALUATION_CHUNK
        return harmonic_loss(
            hidden,
            head.centers,
            tf.cast(target_ids, tf.int32),
            eta=head.resolved_eta(),
            eps=head.eps,
            reduction="none",
            ignore_index=None,
            chunk_size=chunk,
        )

    def save_to_preset(self, preset_dir: str, max_shard_size: int | float | None = 10) -> None:
        """keras-hub's preset, plus this model's compile settings (the loss, its estimator, the
        metrics, the optimizer's config and the sampler, in ``task.json``), which keras-hub's
        preset format leaves out. ``config.json`` names :class:`HarmonicCausalLMPreset` for
        the backbone class, so keras-hub's own loaders build this model or fail loudly, never a
        stock dot-product model."""
        super().save_to_preset(preset_dir, max_shard_size=max_shard_size)
        preset = _compat.Preset(preset_dir)
        preset.edit_backbone_config(_preset_marker)
        if self.compiled:
            compiled = {**self.get_compile_config(), "sampler": self.get_config()["sampler"]}

            def with_compile(task):
                task["config"]["compile_config"] = compiled
                return task

            preset.edit_task_config(with_compile)

    def get_config(self) -> dict:
        head = self.harmonic_head
        config = super().get_config()
        config.update(eta=head.eta, eta_init=head.eta_init, eps=head.eps)
        config["frozen_when_saved"] = head.get_config()["frozen_when_saved"]
        sampler = getattr(self, "sampler", None) if self.compiled else None
        config["sampler"] = (
            None if sampler is None else keras.saving.serialize_keras_object(sampler)
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> HarmonicCausalLM:
        config = dict(config)
        sampler = config.pop("sampler", None)
        compiled = config.pop("compile_config", None)  # a preset's task.json
        model = super().from_config(config)
        # compile_from_config (a .keras reload) compiles with it; a plain object, not tracked.
        object.__setattr__(model, "_restored_sampler", sampler)
        if compiled is not None:
            model.compile_from_config(compiled)
        return model

    @classmethod
    def from_preset(cls, preset: str, load_weights: bool = True, **kwargs) -> HarmonicCausalLM:
        """From a keras-hub preset (a local directory, or a Kaggle/HF handle): a
        ``HarmonicCausalLM`` preset is restored whole; a backbone or any ``CausalLM`` preset
        gives its backbone (and preprocessor, if the preset has one) a harmonic head.
        ``kwargs`` go to the constructor (``eta=...``)."""
        source = _compat.Preset(preset)
        saved = source.task_class()
        if "backbone" not in kwargs and not (saved is not None and issubclass(saved, cls)):
            backbone_cls = source.loader.check_backbone_class()
            kwargs["backbone"] = source.loader.load_backbone(backbone_cls, load_weights)
            if "preprocessor" not in kwargs and source.has_tokenizer():
                base = causal_lm_class(backbone_cls)
                kwargs["preprocessor"] = source.loader.load_preprocessor(base.preprocessor_cls)
        task = source.loader.load_task(cls, load_weights, True, **kwargs)
        if source.has(COMPILE_FILE):
            with open(source.path(COMPILE_FILE)) as f:
                task.compile_from_config(json.load(f))
        return task


def _check_backbone(backbone) -> None:
    """A causal-LM backbone with a plain hidden-state output and a token embedding, or a
    ``ValueError`` saying what is missing."""
    name = type(backbone).__name__
    if getattr(backbone, "token_embedding", None) is None:
        raise ValueError(
            f"`backbone` ({name}) has no `token_embedding` to tie the harmonic head to."
        )
    causal_lm_class(type(backbone))  # raises for a backbone without a causal LM
    cap = getattr(backbone, "final_logit_soft_cap", None)
    if cap is not None:
        raise ValueError(
            f"`backbone` ({name}) has final_logit_soft_cap={cap}: its CausalLM squashes "
            "dot-product logits as cap * tanh(z / cap). Harmonic logits are -(eta/2) log(d^2), "
            "hundreds in size at eta = 2 D, so the same cap would flatten every distribution; "
            "the harmonic head does not apply it. Build the backbone with "
            "final_logit_soft_cap=None to train it with a harmonic head."
        )


def _preset_marker(config: dict) -> dict:
    """``config.json`` naming :class:`HarmonicCausalLMPreset` instead of the backbone class."""
    return {
        **config,
        "module": HarmonicCausalLMPreset.__module__,
        "class_name": HarmonicCausalLMPreset.__name__,
        "registered_name": keras.saving.get_registered_name(HarmonicCausalLMPreset),
        "harmonic_tf_backbone": {
            key: config.get(key) for key in ("module", "class_name", "registered_name")
        },
    }
