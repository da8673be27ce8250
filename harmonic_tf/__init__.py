"""harmonic-tf: exact, memory-efficient and sampled harmonic loss for TensorFlow and Keras.

Two halves: :mod:`harmonic_tf.ops`, the math in pure TensorFlow, and :mod:`harmonic_tf.keras`,
the Keras layer, loss, metrics and models built on it. Every public name of both is here.
"""

from harmonic_tf import keras as _keras_half
from harmonic_tf import ops as _ops_half
from harmonic_tf.keras import *  # noqa: F403
from harmonic_tf.ops import *  # noqa: F403

__version__ = "0.3.0.dev0"

# Names, not modules: `harmonic_tf.ops.inputs` (the shared argument checks) stays in ops.
__all__ = sorted(
    name
    for name in {*_ops_half.__all__, *_keras_half.__all__}
    if not isinstance(getattr(_ops_half, name, None), type(_ops_half))
)
