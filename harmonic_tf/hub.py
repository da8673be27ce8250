"""The old home of :mod:`harmonic_tf.keras.hub`, kept so ``from harmonic_tf.hub import
HarmonicCausalLM`` still works."""

from harmonic_tf.keras.hub import COMPILE_FILE, HarmonicCausalLM, causal_lm_class, harmonic_class

__all__ = ["COMPILE_FILE", "HarmonicCausalLM", "causal_lm_class", "harmonic_class"]
