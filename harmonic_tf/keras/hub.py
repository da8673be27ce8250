"""keras-hub causal LMs with a harmonic head (``pip install "harmonic-tf[hub]"``).

:class:`HarmonicCausalLM` puts a :class:`HarmonicLMHead` on any keras-hub causal-LM backbone,
tied to the token embedding its family reads logits out with, so a pretrained model's output
matrix becomes the class centers. ``HarmonicCausalLM(backbone)`` is an instance of
``Harmonic<Family>`` (:func:`harmonic_class`), a subclass of the family's own ``CausalLM``
(``Gemma3CausalLM``, ``PaliGemmaCausalLM``, ...): its inputs, cache and ``generate()`` are the
family's, and only the read-out is harmonic, so any keras-hub sampler samples the harmonic
distribution.

Why a subclass made per family and not a mixin the family class shares: Keras's
``inject_functional_model_class`` walks a class's bases without memory and fails on a diamond
that joins below ``keras.Model`` (at ``CausalLM``), so the family's ``__init__`` runs on a
stock instance of its own class, whose graph this class reads with the read-out swapped.
"""

from __future__ import annotations

import functools
import inspect
import json

import keras
import tensorflow as tf

try:
    import keras_hub
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("harmonic_tf.hub needs keras-hub: pip install 'harmonic-tf[hub]'") from error

from harmonic_tf.keras import _compat
from harmonic_tf.keras.layers import HarmonicLMHead
from harmonic_tf.keras.losses import HarmonicLoss
from harmonic_tf.keras.metrics import HarmonicAccuracy
from harmonic_tf.keras.models import HarmonicTraining
from harmonic_tf.ops import harmonic_loss

# The HarmonicLMHead arguments a causal LM takes and saves: the head is tied to the token
# embedding (no initializer, regularizer or constraint of its own) and returns logits (what
# keras-hub's samplers read).
HEAD_ARGUMENTS = ("eta", "eta_init", "eta_rate", "eps", "distance", "frozen_when_saved")

# Operations a family may apply after its read-out that only select positions.
POSITION_OPS = frozenset({"GetItem", "Slice", "Take", "TakeAlongAxis"})

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
        "keras_hub.models.CausalLM.from_preset(preset) (after import harmonic_tf.keras.hub); "
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
    """The keras-hub ``CausalLM`` class of ``backbone_cls``, whose decoding code a harmonic model
    runs. Deterministic: keras-hub lists its task classes from a set, and some backbones have
    several (Gemma 4's draft model ``Gemma4AssistantCausalLM``, BLIP-2's ``Seq2SeqLM``); where
    more than one fits, the one named after the backbone (``Gemma4Backbone`` ->
    ``Gemma4CausalLM``) is the family's own."""
    found = sorted(
        (cls for cls in _families() if getattr(cls, "backbone_cls", None) is backbone_cls),
        key=lambda cls: cls.__name__,
    )
    if not found:
        raise ValueError(
            f"`backbone` ({backbone_cls.__name__}) is not a causal-LM backbone: keras-hub has "
            "no CausalLM for it (an encoder such as BERT reads both directions). "
            "HarmonicCausalLM needs a decoder backbone (GPT-2, Llama, Gemma, ...)."
        )
    own = [c for c in found if c.__name__ == backbone_cls.__name__.replace("Backbone", "CausalLM")]
    if len(found) > 1 and len(own) != 1:
        names = ", ".join(c.__name__ for c in found)
        raise ValueError(
            f"`backbone` ({backbone_cls.__name__}) has several keras-hub causal LMs ({names}); "
            "build the one you mean and pass it to HarmonicCausalLM.from_causal_lm(lm)."
        )
    return own[0] if len(found) > 1 else found[0]


def _families() -> list[type]:
    """keras-hub's causal-LM classes, less its sequence-to-sequence ones and ours."""
    return [
        cls
        for cls in _compat.causal_lm_classes()
        if not issubclass(cls, (HarmonicCausalLM, keras_hub.models.Seq2SeqLM))
    ]


@functools.cache  # one class per family: isinstance, and the name it is saved and loaded by
def harmonic_class(family: type) -> type:
    """The harmonic model class of a keras-hub ``CausalLM`` class ``family``:
    ``Harmonic<Family>``, which runs ``family``'s own code (its inputs, cache, ``generate``)
    with a :class:`HarmonicLMHead` in place of its read-out. Registered with Keras under
    ``harmonic_tf>Harmonic<Family>``, so its ``.keras`` files and presets load by that name."""
    if not (isinstance(family, type) and issubclass(family, keras_hub.models.CausalLM)):
        raise TypeError(f"`family` must be a keras-hub CausalLM class, got {family!r}.")
    if issubclass(family, HarmonicCausalLM):
        return family
    name = f"Harmonic{family.__name__}"
    doc = f"A :class:`HarmonicCausalLM` running ``{family.__name__}``'s own code."
    namespace = {"__module__": __name__, "__doc__": doc, "family": family}
    cls = type(name, (HarmonicCausalLM, family), namespace)
    return keras.saving.register_keras_serializable(package="harmonic_tf", name=name)(cls)


@keras.saving.register_keras_serializable(package="harmonic_tf")
class HarmonicCausalLM(HarmonicTraining):
    """A keras-hub causal LM whose read-out is a :class:`HarmonicLMHead` tied to the token
    embedding its family reads logits out with.

    ``HarmonicCausalLM(backbone)`` builds ``Harmonic<Family>`` (:func:`harmonic_class`), a
    subclass of both this class and the family's own ``CausalLM`` (e.g. ``Gemma3CausalLM``):
    the family's ``__init__`` builds its model graph (its inputs: images, vision masks, ...;
    its own slicing of the outputs), and only its one read-out,
    ``token_embedding(hidden, reverse=True)``, becomes the harmonic head; ``generate()`` runs the
    family's cache and decoding code, with harmonic logits from the hidden states its cached
    step returns. ``fit`` uses the compiled :class:`HarmonicLoss` on those hidden states
    (sampled or exact chunked), ``evaluate`` the exact chunked loss, ``predict`` returns
    harmonic logits at the positions the stock model returns.

    Args:
      backbone: a keras-hub causal-LM backbone (e.g. ``GPT2Backbone``).
      preprocessor: its ``CausalLMPreprocessor``, or ``None``.
      eta, eta_init, eta_rate, eps, distance, frozen_when_saved: of the head (see
        :class:`HarmonicLMHead`; ``distance="cosine"`` for a cosine harmonic head).

    ``compile`` defaults: Adam(2e-5), the exact ``HarmonicLoss()``, weighted
    :class:`HarmonicAccuracy`, ``sampler="top_k"``; the settings survive a ``.keras`` reload
    and a ``save_to_preset`` / ``from_preset`` round trip.

    Examples:
      >>> backbone = keras_hub.models.GPT2Backbone(
      ...     vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=8,
      ...     intermediate_dim=16, max_sequence_length=8)
      >>> lm = HarmonicCausalLM(backbone)
      >>> print(type(lm).__name__, isinstance(lm, keras_hub.models.GPT2CausalLM))
      HarmonicGPT2CausalLM True
      >>> lm.compile(loss=HarmonicLoss(sampled=SampledOptions(k=8)), sampler="greedy")
      >>> ids = np.arange(16).reshape(2, 8) % 64
      >>> x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
      >>> print(lm.predict(x, verbose=0).shape)
      (2, 8, 64)
    """

    # None, as keras-hub's own loaders must never pick a harmonic class for a stock preset.
    backbone_cls = None
    preprocessor_cls = None

    def __new__(cls, *args, **kwargs):
        # Keras calls cls.__new__(cls) bare on every base class when it builds a functional
        # model: nothing to pick then.
        if cls is HarmonicCausalLM and (args or kwargs):
            backbone = kwargs["backbone"] if "backbone" in kwargs else (args or [None])[0]
            if not isinstance(backbone, keras_hub.models.Backbone):
                raise TypeError(f"`backbone` must be a keras-hub Backbone, got {backbone!r}.")
            cls = harmonic_class(causal_lm_class(type(backbone)))
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        backbone,
        preprocessor=None,
        *,
        eta: float | str | None = None,
        eta_init: float | None = None,
        eta_rate: float = 1.0,
        eps: float = 1e-9,
        distance: str = "euclidean",
        frozen_when_saved: bool = False,
        **kwargs,
    ):
        head_args = dict(eta=eta, eta_init=eta_init, eta_rate=eta_rate, eps=eps, distance=distance)
        head_args["frozen_when_saved"] = frozen_when_saved  # HEAD_ARGUMENTS, all of them
        own = {k: kwargs.pop(k) for k in _own_arguments(self.family) if k in kwargs}
        stock = self.family(backbone=backbone, preprocessor=preprocessor, compile=False, **own)
        embedding, hidden = _hidden_states_of(stock, type(backbone).__name__)
        _check_readout(embedding, type(backbone).__name__)
        head = HarmonicLMHead(tied_embedding=embedding, name="harmonic_head", **head_args)
        self.backbone, self.preprocessor = backbone, preprocessor
        # keras-hub's CausalLM, skipping the family's __init__ (it ran on `stock`)
        keras_hub.models.CausalLM.__init__(self, inputs=stock.input, outputs=head(hidden), **kwargs)
        for name, value in vars(stock).items():  # what the family's __init__ set (Gemma 4's cap)
            if not name.startswith("_") and name not in vars(self):
                setattr(self, name, value)
        self._route_to(head, keras.Model(stock.input, hidden, name=f"{self.name}_hidden_states"))

    @classmethod
    def from_causal_lm(
        cls, causal_lm: keras_hub.models.CausalLM, *, calibrate=None, **head_args
    ) -> HarmonicCausalLM:
        """A harmonic model of ``causal_lm``'s own class on its backbone and preprocessor
        (shared, not copied: the centers are its token embedding). ``head_args`` go to the
        constructor (``eta=...``).

        ``calibrate``: one preprocessed batch ``(x, y)`` or ``(x, y, sample_weight)`` (labels
        ``-100`` ignored), or a ``tf.data.Dataset`` of them (its first batch is used). Then the
        exponent is fixed by :meth:`calibrate_eta` on it: the switch from a cross-entropy
        checkpoint at no cost (docs/keras-hub.md, "From a cross-entropy checkpoint")."""
        if isinstance(causal_lm, HarmonicCausalLM):
            raise ValueError("`causal_lm` is already a HarmonicCausalLM.")
        family = harmonic_class(type(causal_lm))
        lm = family(backbone=causal_lm.backbone, preprocessor=causal_lm.preprocessor, **head_args)
        if calibrate is not None:
            lm.calibrate_eta(*_calibration_batch(calibrate))
        return lm

    def call_with_cache(self, *args, **kwargs):
        """The family's cached decoding step, with the harmonic head's logits of the hidden
        states it returns (its own dot-product logits go unused; XLA drops them)."""
        _, hidden, *rest = super().call_with_cache(*args, **kwargs)
        return (self.harmonic_head(hidden), hidden, *rest)

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
        hidden = self.hidden_states(_text_inputs(self, token_ids, padding_mask))
        head = self.harmonic_head
        if scoring_mode == "logits":
            return head(hidden)
        loss = self.harmonic_loss
        chunk = (loss or HarmonicLoss()).evaluation_chunk_size
        return harmonic_loss(
            hidden,
            head.centers,
            tf.cast(target_ids, tf.int32),
            **head.measure(),
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
        config = super().get_config()
        head = self.harmonic_head.get_config()
        config.update({name: head[name] for name in HEAD_ARGUMENTS})
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
        if cls is HarmonicCausalLM:  # saved by harmonic-tf 0.2: the family from the backbone
            backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
            family = harmonic_class(causal_lm_class(type(backbone)))
            return family.from_config({**config, "backbone": backbone, "sampler": sampler})
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
            backbone_cls = source.backbone_class()
            kwargs["backbone"] = source.load_backbone(backbone_cls, load_weights)
            if "preprocessor" not in kwargs and source.has_tokenizer():
                family = causal_lm_class(backbone_cls)
                kwargs["preprocessor"] = source.load_preprocessor(family.preprocessor_cls)
        task = source.load_task(cls, load_weights, **kwargs)
        if source.has(COMPILE_FILE):
            with open(source.path(COMPILE_FILE)) as f:
                task.compile_from_config(json.load(f))
        return task


def _calibration_batch(data) -> tuple:
    """``(x, y[, sample_weight])`` of ``from_causal_lm(calibrate=data)``."""
    if isinstance(data, tf.data.Dataset):
        data = next(iter(data))
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise ValueError(
            "`calibrate` must be a batch (x, y) or (x, y, sample_weight) of preprocessed "
            f"inputs and labels, or a tf.data.Dataset of them; got {type(data).__name__}."
        )
    return tuple(data)


def _own_arguments(family: type) -> list[str]:
    """The family constructor's own keyword arguments (Gemma 4's ``final_logit_cap``)."""
    params = inspect.signature(family.__init__).parameters
    skip = {"self", "backbone", "preprocessor"}
    return [n for n, p in params.items() if n not in skip and p.kind is p.POSITIONAL_OR_KEYWORD]


def _hidden_states_of(stock: keras.Model, family: str):
    """``(embedding, hidden)``: the layer the stock model's graph reads logits out with
    (``embedding(h, reverse=True)``), and that graph's output with ``h`` in place of the
    logits: the hidden states at the positions the stock model returns. What follows the
    read-out is replayed on ``h`` if it only selects positions (PaliGemma drops the image
    positions); anything else (Gemma 4's ``final_logit_cap``) is refused."""
    found, after = [], []

    def call(layer, *args, **kwargs):
        if kwargs.get("reverse") is True and hasattr(layer, "embeddings"):
            found.append(layer)
            return args[0] if args else kwargs["inputs"]
        if found:
            after.append(layer)
        return layer(*args, **kwargs)

    hidden = keras.models.clone_model(
        stock, input_tensors=stock.input, clone_function=lambda layer: layer, call_function=call
    ).output
    squashing = [type(op).__name__ for op in after if type(op).__name__ not in POSITION_OPS]
    if squashing:
        raise ValueError(
            f"`backbone` ({family}): its CausalLM applies {squashing} to the logits after its "
            "read-out (a logit cap such as Gemma 4's final_logit_cap), which would squash "
            "harmonic logits (hundreds in size at eta = 2 D); build it without one."
        )
    if len(found) != 1 or keras.tree.is_nested(hidden) or hidden.shape[-1] != found[0].output_dim:
        raise ValueError(f"`backbone` ({family}): {_no_readout_reason(stock)}")
    return found[0], hidden


def _no_readout_reason(stock: keras.Model) -> str:
    """Why a family's graph has no ``embedding(h, reverse=True)`` read-out to replace."""
    ops = {type(op).__name__ for op in stock.operations}
    if "Matmul" in ops:  # Gemma 3n's language model's embedding
        return (
            "its CausalLM's graph reads logits out with a bare matmul against its embedding, "
            "not a layer call a harmonic head can take the place of."
        )
    return (
        "its backbone returns logits, not hidden states (its CausalLM outputs the backbone's "
        "own head, as RWKV-7's dense head), so there is nothing for a harmonic head to read."
    )


def _check_readout(embedding, family: str) -> None:
    """Refuses a read-out whose logits the family squashes (Gemma 2's soft cap)."""
    cap = getattr(embedding, "logit_soft_cap", None)
    if cap is not None:
        raise ValueError(
            f"`backbone` ({family}) has final_logit_soft_cap={cap}: its CausalLM squashes "
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


def _text_inputs(lm, token_ids, padding_mask) -> dict:
    """``score``'s inputs, or a ``ValueError`` for a family that also needs images."""
    needs = set(lm.input) if isinstance(lm.input, dict) else set()
    extra = sorted(needs - {"token_ids", "padding_mask"})
    if extra:
        raise ValueError(
            f"score() takes token ids and a padding mask; {type(lm).__name__} also needs "
            f"{extra}: use predict() or evaluate() with the full inputs."
        )
    return {"token_ids": token_ids, "padding_mask": padding_mask}


# Every keras-hub family's harmonic class exists (and is registered) once this module is
# imported, so a saved model or preset of any family loads by its class name.
for _family in _families():
    harmonic_class(_family)
del _family
