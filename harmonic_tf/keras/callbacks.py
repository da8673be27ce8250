"""``ExponentAnneal``: a schedule for a harmonic head's exponent during training."""

from __future__ import annotations

import math

import keras

from harmonic_tf.keras.layers import LEARNED, HarmonicLMHead
from harmonic_tf.ops import default_eta
from harmonic_tf.ops import inputs as checks


class ExponentAnneal(keras.callbacks.Callback):
    """Moves a harmonic head's exponent from where it is to ``end`` over the first ``steps``
    training batches, geometrically, then holds it there.

    The recipe for fine-tuning a cross-entropy checkpoint whose centers move (trained beside
    LoRA, or in full): start at the calibrated exponent, where the checkpoint reads best, and
    end at the default ``2 D``, which trains best (docs/keras-hub.md, "Which recipe,
    measured"). The head must have ``eta="learned"``: its exponent is then the weight
    ``log_eta``, which the compiled step reads, so nothing is retraced; the schedule owns it
    (the weight is made non-trainable). Pass the same callback to every ``fit`` of the run: it
    counts batches across them.

    Args:
      head: a :class:`HarmonicLMHead` with ``eta="learned"``, built.
      steps: training batches to reach ``end``.
      end: the final exponent (default: the head's default rule,
        ``harmonic_tf.default_eta(D, head.distance)``: ``2 D`` for the Euclidean distance).

    Examples:
      >>> head = HarmonicLMHead(5, eta="learned", eta_init=32.0)
      >>> head.build((None, 4))
      >>> anneal = ExponentAnneal(head, steps=2)  # to 2 D = 8
      >>> for batch in range(3):
      ...     anneal.on_train_batch_begin(batch)
      ...     print(round(float(head.resolved_eta()), 3))
      32.0
      16.0
      8.0
    """

    def __init__(self, head: HarmonicLMHead, steps: int, end: float | None = None):
        super().__init__()
        if not isinstance(head, HarmonicLMHead) or head.eta != LEARNED or not head.built:
            raise ValueError(
                "ExponentAnneal needs a built HarmonicLMHead with eta='learned' (its exponent "
                f"is then a weight the step reads), got {head!r}."
            )
        checks.check_int("steps", steps, 1)
        end = default_eta(int(head.centers.shape[-1]), head.distance) if end is None else end
        checks.check_positive("end", end)
        self.head, self.steps, self.end = head, steps, float(end)
        self.start = float(head.resolved_eta())
        self.step = 0
        head.log_eta.trainable = False

    def on_train_batch_begin(self, batch, logs=None):
        eta = self.start * (self.end / self.start) ** min(self.step / self.steps, 1.0)
        self.head.log_eta.assign(math.log(eta) / self.head.eta_rate)
        self.step += 1
