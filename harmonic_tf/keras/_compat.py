"""Every private Keras / keras-hub use of the package, in one place.

Each helper says why no public API serves. They were tested with the versions in ``TESTED``
(also the bounds in ``pyproject.toml``); ``tests/test_architecture.py`` fails with a clear
message on another major version, and importing this module warns.
"""

from __future__ import annotations

import importlib.metadata
import warnings

import keras

# Distribution name -> (major version tested, versions tested).
TESTED = {
    "keras": (3, "3.15"),
    "tensorflow": (2, "2.21"),
    "keras-hub": (0, "0.32"),
}


def untested_versions() -> list[str]:
    """Messages for installed libraries whose major version this module was not tested with."""
    found = []
    for dist, (major, tested) in TESTED.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if int(version.split(".")[0]) != major:
            found.append(
                f"harmonic-tf's private uses of {dist} (harmonic_tf/keras/_compat.py) were "
                f"tested with {dist} {tested}; found {version}: review that file."
            )
    return found


for _message in untested_versions():
    warnings.warn(_message, stacklevel=2)


def set_compile_config(model: keras.Model, **entries) -> None:
    """Makes ``model.get_compile_config()`` (and so ``.keras`` files) hold ``entries``.
    Keras records the arguments of ``Model.compile``; a model that compiles with ``loss=None``
    and computes its loss itself has no public way to record the loss it was given."""
    from keras.src.saving.serialization_lib import SerializableDict

    config = getattr(model, "_compile_config", None)
    base = config.config if config is not None else {}
    model._compile_config = SerializableDict(**{**base, **entries})


def track_loss(model: keras.Model, loss, batch_size) -> None:
    """Adds ``loss`` to the ``loss`` entry of the logs, as ``Model.compute_loss`` does with
    its private tracker; a ``train_step`` that computes the loss itself has no public hook."""
    model._loss_tracker.update_state(loss, sample_weight=batch_size)


def compiled_metrics(model: keras.Model):
    """The container of the metrics given to ``compile`` (``None`` when there are none);
    ``model.metrics`` flattens it, and updating it needs the container itself."""
    return model._compile_metrics


def output_layer(model: keras.Model) -> tuple[keras.layers.Layer, object]:
    """``(layer, its input tensor)`` of a functional model's single output. ``layer.input``
    is public but ambiguous for a layer called more than once; the output's history is not."""
    (output,) = keras.tree.flatten(model.outputs)
    history = output._keras_history
    layer = history.operation
    return layer, layer._inbound_nodes[history.node_index].input_tensors[0]


def find_upstream_layer(tensor, name: str):
    """The layer called ``name`` among the functional-graph ancestors of ``tensor``, or inside
    one of them (a keras-hub backbone is one nested model holding ``token_embedding``), or
    ``None``. Keras has no public walk over a symbolic tensor's producers."""
    seen, stack = set(), [tensor]
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        if history is None or id(history.operation) in seen:
            continue
        op = history.operation
        seen.add(id(op))
        if op.name == name:
            return op
        for layer in op._flatten_layers(include_self=False) if hasattr(op, "layers") else ():
            if layer.name == name:
                return layer
        stack.extend(op._inbound_nodes[history.node_index].input_tensors)
    return None


def causal_lm_classes() -> list[type]:
    """Every ``keras_hub.models.CausalLM`` subclass: keras-hub's registry of tasks is private
    (its public ``from_preset`` picks one by a preset's backbone only)."""
    import keras_hub
    from keras_hub.src.utils import preset_utils

    return preset_utils.list_subclasses(keras_hub.models.CausalLM)


class Preset:
    """The few questions ``HarmonicCausalLM.from_preset`` asks of a keras-hub preset; its
    public ``from_preset`` cannot build a task class it does not know from a backbone preset."""

    def __init__(self, preset: str):
        from keras_hub.src.utils import preset_utils

        self._utils = preset_utils
        self.preset = preset
        self.loader = preset_utils.get_preset_loader(preset)

    def has(self, filename: str) -> bool:
        return self._utils.check_file_exists(self.preset, filename)

    def has_tokenizer(self) -> bool:
        return self.has(self._utils.TOKENIZER_CONFIG_FILE)

    def task_class(self) -> type | None:
        """The class of the task the preset saved whole (its ``task.json``), or ``None``."""
        if not self.has(self._utils.TASK_CONFIG_FILE):
            return None
        config = self._utils.load_json(self.preset, self._utils.TASK_CONFIG_FILE)
        return self._utils.check_config_class(config)

    def backbone_class(self) -> type:
        return self.loader.check_backbone_class()

    def load_backbone(self, cls: type, load_weights: bool):
        return self.loader.load_backbone(cls, load_weights=load_weights)

    def load_preprocessor(self, cls: type):
        return self.loader.load_preprocessor(cls)

    def load_task(self, cls: type, load_weights: bool, **kwargs):
        """The task ``cls`` (its weights too, when the preset saved them and ``load_weights``)."""
        return self.loader.load_task(
            cls, load_weights=load_weights, load_task_weights=load_weights, **kwargs
        )

    def path(self, filename: str) -> str:
        return self._utils.get_file(self.preset, filename)

    def edit(self, filename: str, change) -> None:
        """Rewrites the JSON file ``filename`` of a local preset directory as
        ``change(content)``; keras-hub has no public hook into what a preset saves."""
        import json
        import os

        path = os.path.join(self.preset, filename)
        with open(path) as f:
            content = json.load(f)
        with open(path, "w") as f:
            json.dump(change(content), f, indent=4)

    def edit_backbone_config(self, change) -> None:
        self.edit(self._utils.CONFIG_FILE, change)

    def edit_task_config(self, change) -> None:
        self.edit(self._utils.TASK_CONFIG_FILE, change)
