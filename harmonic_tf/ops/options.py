"""``SampledOptions``: how the sampled loss estimates the full softmax; ``ExactOptions``: how
the exact loss bounds its memory. Each validated once, when made.

The measured defaults are these classes' defaults and nowhere else; named presets give the
other estimators people compare with.
"""

from __future__ import annotations

import dataclasses

from harmonic_tf.ops import inputs
from harmonic_tf.ops.exact import DEFAULT_CHUNK_SIZE, DENSE_MAX_BYTES, PATHS, exact_matmul_flops
from harmonic_tf.ops.sampling import Sampler, UnigramSampler, sampler_spec

NEGATIVES = ("shared", "per_example")
LOG_Q_CORRECTIONS = ("negatives", "all", "none")
CENTER_GRADIENTS = ("rows", "indexed_slices", "dense")
DEFAULT_CENTER_ROWS = 128
# The sampled step's work besides its matmuls (drawing, the in-batch scatter over [V], gathers,
# the dense center gradient's scatters) costs about the exact loss of this many more tokens:
# fitted where the two losses' times cross (benchmarks/bench_crossover.py, N = 512-8192, D =
# 128-512; docs/sampled.md, "When the exact loss is faster").
SAMPLING_OVERHEAD_TOKENS = 128


@dataclasses.dataclass(frozen=True)
class SampledOptions:
    """The sampled harmonic loss's estimator (frozen; checked when made).

    Per token the loss is over its label and candidate negatives: the batch's distinct labels
    (an exact stratum: each counted once, uncorrected) and ``k`` draws from ``sampler`` for the
    rest, each corrected by ``-log(expected count)`` so the sampled denominator estimates the
    full one.

    Attributes:
      k: draws per training step (``negatives="shared"``, one ``[N, D] x [D, K]`` matmul) or per
        token (``"per_example"``, none equal to that token's label, ``1 <= k <= V - 1``).
        ``k=0`` is allowed with shared in-batch negatives only.
      negatives: ``"shared"`` or ``"per_example"``.
      sampler: ``"log_uniform"`` (ids sorted by frequency), ``"uniform"``, a
        :class:`~harmonic_tf.Sampler`, or a 1-D array of token counts (a unigram sampler; the
        best measured choice: see :func:`~harmonic_tf.label_counts`).
      log_q_correction: ``"negatives"`` (the draws only: unbiased), ``"all"`` (the true logit
        too: ``tf.nn.sampled_softmax_loss``'s convention, biased) or ``"none"``.
      remove_accidental_hits: mask a token's draws equal to its own label.
      in_batch_negatives: capacity ``m`` of the exact stratum (the first ``m`` distinct labels
        of the batch; past it labels fall to the draws), ``"all"`` (``N`` columns) or 0 (off).
      center_gradient: ``"rows"``: dense and unbiased, every token's exact pull plus the full
        push of ``center_rows`` tokens drawn from the batch, scaled by ``N / center_rows``;
        ``"indexed_slices"``: only the label and candidate rows, as ``tf.IndexedSlices``;
        ``"dense"``: the same scattered into a ``[V, D]`` tensor.
      center_rows: tokens whose full-vocabulary push moves the centers (``"rows"`` only;
        default 128).
      center_control_variate: with ``"rows"`` (on by default there): every token's push on
        its own label and on the batch's label columns enters in full (with the candidates'
        probabilities), and the rows estimate only the rest (their own push on those columns
        is subtracted, so the estimate stays unbiased). Cuts the centers' gradient noise about
        11-fold for one ``[N, m] x [N, D]`` product.

    Examples:
      >>> options = SampledOptions(k=1024)
      >>> print(options.k, options.in_batch_negatives, options.center_rows)
      1024 768 128
      >>> print(SampledOptions().k, SampledOptions().center_control_variate)
      512 True
      >>> print(SampledOptions.prototype().negatives)
      per_example
    """

    k: int = 512
    negatives: str = "shared"
    sampler: str | Sampler = "log_uniform"
    log_q_correction: str = "negatives"
    remove_accidental_hits: bool = True
    in_batch_negatives: int | str = 768
    center_gradient: str = "rows"
    center_rows: int | None = None
    center_control_variate: bool | None = None

    def __post_init__(self):
        inputs.check_choice("negatives", self.negatives, NEGATIVES)
        inputs.check_choice("log_q_correction", self.log_q_correction, LOG_Q_CORRECTIONS)
        inputs.check_choice("center_gradient", self.center_gradient, CENTER_GRADIENTS)
        if not isinstance(self.remove_accidental_hits, bool):
            raise TypeError(
                f"`remove_accidental_hits` must be a bool, got {self.remove_accidental_hits!r}."
            )
        if self.in_batch_negatives != "all":
            inputs.check_int("in_batch_negatives", self.in_batch_negatives, 0)
        in_batch = self.in_batch_negatives != 0
        if self.negatives == "per_example":
            inputs.check_int("k", self.k, 1)
        else:
            inputs.check_int("k", self.k, 0 if in_batch else 1)
        rows = self.center_rows
        if self.center_gradient == "rows":
            rows = DEFAULT_CENTER_ROWS if rows is None else rows
            inputs.check_int("center_rows", rows, 1)
        elif rows is not None:
            raise ValueError(
                f"`center_rows` goes with center_gradient='rows', got center_rows={rows} with "
                f"center_gradient={self.center_gradient!r}."
            )
        variate = self.center_control_variate
        if variate is None:  # the default: on wherever there are center rows
            variate = self.center_gradient == "rows"
        if not isinstance(variate, bool):
            raise TypeError(f"`center_control_variate` must be a bool, got {variate!r}.")
        if variate and self.center_gradient != "rows":
            raise ValueError(
                "`center_control_variate` goes with center_gradient='rows', got "
                f"center_gradient={self.center_gradient!r}."
            )
        object.__setattr__(self, "center_rows", rows)
        object.__setattr__(self, "center_control_variate", variate)
        object.__setattr__(self, "sampler", sampler_spec(self.sampler))

    def replace(self, **changes) -> SampledOptions:
        """A copy with ``changes`` (checked again). A change of ``center_gradient`` drops what
        belongs to the old one (``center_rows``, the control variate) to the new one's default."""
        if changes.get("center_gradient", self.center_gradient) != self.center_gradient:
            changes.setdefault("center_rows", None)
            changes.setdefault("center_control_variate", None)
        return dataclasses.replace(self, **changes)

    def in_batch_columns(self, num_tokens: int | None) -> int | None:
        """Width of the in-batch block over a batch of ``num_tokens`` tokens (``None``: not
        known when traced): 0 when off, never more than the batch (which holds no more
        distinct labels), ``None`` for ``"all"`` over an unknown batch."""
        capacity = self.in_batch_negatives
        if capacity == "all" or num_tokens is None:
            return num_tokens if capacity == "all" else capacity
        return min(capacity, num_tokens)

    def columns(self, num_tokens: int) -> tuple[int, int]:
        """``(draw columns, in-batch columns)`` of a token's logits over ``num_tokens``."""
        inputs.check_int("num_tokens", num_tokens, 1)
        return self.k, self.in_batch_columns(num_tokens)

    def matmul_flops(self, num_tokens: int, vocab_size: int, dim: int) -> float:
        """FLOPs of the estimate's matmuls in one forward+backward over ``num_tokens`` tokens:
        3 products of the candidate columns (``6 N C D``), the center rows' distances and
        push over all of ``V`` (``4 S V D``) and the control variate's push of every token on
        the in-batch columns (``2 N m D``). The exact loss's is
        :func:`~harmonic_tf.ops.exact_matmul_flops`.

        Examples:
          >>> sampled = SampledOptions().matmul_flops(2048, 3000, 128)
          >>> print(round(sampled / exact_matmul_flops(2048, 3000, 128), 3))
          0.554
        """
        inputs.check_int("vocab_size", vocab_size, 1)
        inputs.check_int("dim", dim, 1)
        draws, in_batch = self.columns(num_tokens)
        flops = 6.0 * num_tokens * (draws + in_batch) * dim
        if self.center_gradient == "rows":
            flops += 4.0 * self.center_rows * vocab_size * dim
        if self.center_control_variate:
            flops += 2.0 * num_tokens * in_batch * dim
        return flops

    def faster_than_exact(self, num_tokens: int, vocab_size: int, dim: int) -> bool:
        """Whether this estimate is expected to train faster than the exact loss over
        ``num_tokens`` tokens, ``V = vocab_size`` and width ``dim``: its matmul FLOPs plus a
        fixed overhead (the exact loss of ``SAMPLING_OVERHEAD_TOKENS`` = 128 more tokens) below
        the exact loss's. Fitted on 32 measured points (N = 512-8192, D = 128-512, V = 500-8,000;
        ``benchmarks/results/crossover.md``), it picks the faster loss at 30 of them and at 22
        of 24 held-out ones (``crossover_validation.md``); its wrong picks, all where the two
        times cross, are at most 14% slower.

        Examples:
          >>> options = SampledOptions()  # 2,048 tokens a step, D = 128
          >>> print(options.faster_than_exact(2048, 3000, 128))
          True
          >>> print(options.faster_than_exact(2048, 1000, 128))  # V = 1,000: exact is faster
          False
        """
        sampled = self.matmul_flops(num_tokens, vocab_size, dim)
        overhead = exact_matmul_flops(SAMPLING_OVERHEAD_TOKENS, vocab_size, dim)
        return sampled + overhead < exact_matmul_flops(num_tokens, vocab_size, dim)

    @classmethod
    def tf_sampled_softmax(cls, k: int = 256) -> SampledOptions:
        """``tf.nn.sampled_softmax_loss``'s estimator: ``k`` shared log-uniform draws, logQ on
        the true logit too, accidental hits removed, sparse center gradient (no in-batch
        stratum). Its draws are with replacement where TensorFlow's are unique."""
        return cls(
            k=k,
            log_q_correction="all",
            in_batch_negatives=0,
            center_gradient="indexed_slices",
        )

    @classmethod
    def prototype(cls, k: int = 100) -> SampledOptions:
        """The reference PyTorch prototype ``harmonic_loss_approx``: ``k`` uniform negatives per
        token (none equal to its label), no correction, sparse center gradient."""
        return cls(
            k=k,
            negatives="per_example",
            sampler="uniform",
            log_q_correction="none",
            in_batch_negatives=0,
            center_gradient="indexed_slices",
        )

    def get_config(self) -> dict:
        """Plain Python values; ``SampledOptions.from_config`` rebuilds the same options."""
        config = dataclasses.asdict(self)
        sampler = self.sampler
        if isinstance(sampler, UnigramSampler):
            config["sampler"] = sampler.get_config()
        elif isinstance(sampler, Sampler):
            config["sampler"] = sampler.name
        return config

    @classmethod
    def from_config(cls, config: dict) -> SampledOptions:
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class ExactOptions:
    """The exact loss's memory bounds (frozen; checked when made): what
    :class:`~harmonic_tf.HarmonicLoss` passes to :func:`~harmonic_tf.harmonic_loss`.

    Attributes:
      chunk_size: vocabulary chunk of the training loss once its ``[tokens, V]`` float32
        block is over ``dense_max_bytes`` (``None``: dense logits at any size).
      dense_max_bytes: ``path="auto"`` keeps ``[tokens, V]`` logits up to this size (the
        fastest path there).
      path: ``"auto"``, ``"dense"``, ``"two_pass"`` or ``"fused"``, as in
        :func:`~harmonic_tf.harmonic_loss`.
      evaluation_chunk_size: vocabulary chunk of the exact loss and the metrics in
        ``evaluate`` (no ``[tokens, V]`` logits at any ``V``).

    Examples:
      >>> options = ExactOptions(chunk_size=8192)
      >>> print(options.chunk_size, options.path, options.evaluation_chunk_size)
      8192 auto 4096
    """

    chunk_size: int | None = DEFAULT_CHUNK_SIZE
    dense_max_bytes: int = DENSE_MAX_BYTES
    path: str = "auto"
    evaluation_chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self):
        if self.chunk_size is not None:
            inputs.check_int("chunk_size", self.chunk_size, 1)
        inputs.check_int("dense_max_bytes", self.dense_max_bytes, 0)
        inputs.check_choice("path", self.path, PATHS)
        inputs.check_int("evaluation_chunk_size", self.evaluation_chunk_size, 1)
        if self.path in ("two_pass", "fused") and self.chunk_size is None:
            raise ValueError(f"path={self.path!r} needs a `chunk_size`, got None.")

    def replace(self, **changes) -> ExactOptions:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> ExactOptions:
        return cls(**config)
