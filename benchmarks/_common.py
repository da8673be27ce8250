"""What the benchmark scripts share: the configurations and their floors, the machine's
description, and XLA's memory plan read from a dump. Scripts in this folder import it by name
(Python puts a script's own folder on the path)."""

from __future__ import annotations

import collections
import glob
import json
import os
import platform
import re
import subprocess

CHUNK = 2048
REFERENCE = {"n": 4096, "d": 512, "v": 50257, "k": 256, "chunk": CHUNK}
# Like for like with tf.nn.sampled_softmax_loss: only the k draws (no in-batch negatives, no
# center rows).
PLAIN = {"in_batch_negatives": 0, "center_gradient": "indexed_slices"}

# name -> (description, needs torch)
CONFIGS = {
    "matmul_rate_xla": "this machine's matmul rate: a cross-entropy step's 3 products, XLA",
    "dense_ce_xla": "dense cross-entropy (matmul + sparse_softmax_cross_entropy_with_logits), XLA",
    "dense_ce": "dense cross-entropy, graph mode",
    "tf_sampled_softmax": "tf.nn.sampled_softmax_loss (log-uniform, graph mode; no XLA kernel)",
    "torch_prototype": "reference PyTorch prototype harmonic_loss_approx (per-example, CPU)",
    "harmonic_dense_xla": "ours: harmonic_loss, dense, XLA",
    "harmonic_dense": "ours: harmonic_loss, dense, graph mode",
    "harmonic_chunked_xla": "ours: harmonic_loss, chunk_size=chunk, XLA",
    "harmonic_chunked": "ours: harmonic_loss, chunk_size=chunk, graph mode",
    "harmonic_two_pass_xla": "ours: harmonic_loss, chunk_size=chunk, path='two_pass', XLA",
    "sampled_shared_xla": "ours: sampled_harmonic_loss, shared negatives, XLA",
    "sampled_shared": "ours: sampled_harmonic_loss, shared negatives, graph mode",
    "sampled_default_xla": "ours: sampled_harmonic_loss, package defaults (in-batch + center rows), XLA",
    "sampled_per_example_xla": "ours: sampled_harmonic_loss, per-example negatives, XLA",
    "sampled_per_example": "ours: sampled_harmonic_loss, per-example negatives, graph mode",
}


def run_settings(name: str, spec: str) -> list[tuple[str, str]]:
    """``[(key, value)]`` of a run name's ``key=value+key=value`` part ``spec`` (empty: none);
    a setting without its value stops the script, naming the run."""
    pairs = []
    for setting in spec.split("+") if spec else []:
        key, _, value = setting.partition("=")
        if not key or not value:
            raise SystemExit(
                f"run {name!r}: expected KEY=VALUE settings joined by '+', got {setting!r}"
            )
        pairs.append((key, value))
    return pairs


def inputs(n: int, d: int, v: int):
    """Hidden states ``[n, d]``, centers ``[v, d]`` and labels ``[n]``, seeded."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(n, d)).astype(np.float32))
    w = tf.constant((rng.normal(size=(v, d)) * 0.05).astype(np.float32))
    y = tf.constant(rng.integers(0, v, n).astype(np.int32))
    return x, w, y


def matmul_flops(name: str, n: int, d: int, v: int, k: int, chunk: int = CHUNK) -> float:
    """FLOPs of the loss's matmuls: its time floor at a machine's matmul rate. The exact loss
    needs the 3 products cross-entropy does (6 N V D) on every path; the two-pass path runs a
    4th (the distances again), which shows as its time over this floor."""
    from harmonic_tf.ops import SampledOptions, exact_matmul_flops

    base = name.removesuffix("_xla")
    exact = ("dense_ce", "harmonic_dense", "harmonic_chunked", "harmonic_two_pass", "matmul_rate")
    if base in exact:
        return exact_matmul_flops(n, v, d)
    if base == "sampled_default":
        return SampledOptions(k=k).matmul_flops(n, v, d)
    return 6.0 * n * k * d


def floor_bytes(name: str, n: int, d: int, v: int, k: int, chunk: int = CHUNK) -> int:
    """The unavoidable buffers: the ``[V, D]`` center gradient plus one logits block:
    ``[N, chunk]`` for the chunked exact loss, ``[N, V]`` dense, ``[N, k]`` sampled (the
    defaults: ``[N, k + in-batch]`` and the center rows' ``[S, V]``)."""
    base = name.removesuffix("_xla")
    block = n * k
    if base in ("dense_ce", "harmonic_dense"):
        block = n * v
    elif base in ("harmonic_chunked", "harmonic_two_pass"):
        block = n * min(chunk, v)
    elif base == "sampled_default":
        from harmonic_tf.ops import SampledOptions

        options = SampledOptions(k=k)
        block = n * sum(options.columns(n)) + options.center_rows * v
    return 4 * (v * d + block)


def loss_and_grads(name: str, x, w, y, k: int, chunk: int = CHUNK, reduce_outputs: bool = True):
    """The configuration's forward+backward as a function of ``(x, w)``: ``(loss, dx, dw)``,
    each reduced to a scalar unless ``reduce_outputs`` is False (the HLO report keeps them)."""
    import tensorflow as tf

    import harmonic_tf as ht

    v = int(w.shape[0])
    base = name.removesuffix("_xla")
    losses = {
        "dense_ce": lambda x, w: tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.matmul(x, w, transpose_b=True))
        ),
        "tf_sampled_softmax": lambda x, w: tf.reduce_mean(
            tf.nn.sampled_softmax_loss(w, tf.zeros([v]), tf.cast(y[:, None], tf.int64), x, k, v)
        ),
        "harmonic_dense": lambda x, w: ht.harmonic_loss(x, w, y),
        # dense_max_bytes=0: the chunked path the row names, even where "auto" would go dense.
        "harmonic_chunked": lambda x, w: ht.harmonic_loss(
            x, w, y, chunk_size=chunk, dense_max_bytes=0
        ),
        "harmonic_two_pass": lambda x, w: ht.harmonic_loss(
            x, w, y, chunk_size=chunk, path="two_pass"
        ),
        "sampled_shared": lambda x, w: ht.sampled_harmonic_loss(
            x, w, y, ht.SampledOptions(k=k, **PLAIN)
        ),
        "sampled_default": lambda x, w: ht.sampled_harmonic_loss(x, w, y, ht.SampledOptions(k=k)),
        "sampled_per_example": lambda x, w: ht.sampled_harmonic_loss(
            x, w, y, ht.SampledOptions(k=k, negatives="per_example", **PLAIN)
        ),
    }
    if base == "matmul_rate":
        return _matmul_rate_step(x, w)
    if base not in losses:
        raise ValueError(f"unknown configuration {name!r}")
    loss_fn = losses[base]

    def f(x=x, w=w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = loss_fn(x, w)
        gx, gw = tape.gradient(loss, [x, w])
        if not reduce_outputs:
            return loss, gx, tf.convert_to_tensor(gw)
        # Reduce to scalars so no output buffer is counted beyond what the step needs.
        gw_sum = tf.reduce_sum(gw.values) if isinstance(gw, tf.IndexedSlices) else tf.reduce_sum(gw)
        return loss, tf.reduce_sum(gx), gw_sum

    return f


def _matmul_rate_step(x, w):
    """A cross-entropy step's 3 products at the point's shape, without its softmax."""
    import tensorflow as tf

    g = tf.random.stateless_normal([int(x.shape[0]), int(w.shape[0])], seed=[0, 0])

    def f(x=x, w=w, g=g):
        logits = tf.matmul(x, w, transpose_b=True)
        dx, dw = tf.matmul(g, w), tf.matmul(g, x, transpose_a=True)
        return tf.reduce_sum(logits), tf.reduce_sum(dx), tf.reduce_sum(dw)

    return f


def machine() -> dict:
    import tensorflow as tf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


# Opcodes worth counting (the rest are reshapes, bitcasts, tuples, parameters, constants).
OPS = (
    "dot", "fusion", "while", "scatter", "gather", "sort", "rng-bit-generator", "dynamic-slice",
    "dynamic-update-slice", "reduce", "exponential", "log", "divide", "transpose", "copy",
    "all-reduce", "custom-call",
)  # fmt: skip


def read_dump(dump: str) -> dict:
    """Memory plan and op mix of the largest module in ``dump`` (the step; small ones are
    argument conversions)."""
    reports = glob.glob(os.path.join(dump, "*cpu_after_optimizations-buffer-assignment.txt"))
    best = max(reports, key=lambda p: _total_bytes(open(p).read()))
    text = open(best).read()
    temp, outputs, params, values = 0, 0, 0, []
    for block in re.split(r"\n(?=allocation \d+:)", text.split("\nTotal bytes used")[0]):
        head = block.split("\n", 1)[0]
        match = re.match(r"allocation \d+: size (\d+)", head)
        if not match:
            continue
        size = int(match.group(1))
        if "preallocated-temp" in head:
            temp += size
            for value in re.finditer(
                r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=\d+\): (\S+)", block
            ):
                values.append((int(value.group(2)), value.group(1), value.group(3)))
        elif "parameter" in head:
            params += size
        elif "maybe-live-out" in head or "output shape" in head:
            outputs += size
    hlo = open(best.replace("-buffer-assignment.txt", ".txt")).read()
    ops = collections.Counter(op for op in re.findall(r"= \S+ ([a-z][a-z\-]*)\(", hlo) if op in OPS)
    values.sort(reverse=True)
    return {
        "temp_bytes": temp,
        "output_bytes": outputs,
        "parameter_bytes": params,
        "largest_temp_values": [
            {"bytes": b, "instruction": i, "shape": s} for b, i, s in values[:5]
        ],
        "ops": dict(sorted(ops.items())),
    }


def _total_bytes(text: str) -> int:
    match = re.search(r"Total bytes used: (\d+)", text)
    return int(match.group(1)) if match else 0


def with_dump_flags(env: dict, dump: str) -> dict:
    """``env`` with XLA told to dump each compiled module's HLO and buffer assignment to
    ``dump`` (after any ``XLA_FLAGS`` already set)."""
    flags = f"--xla_dump_to={dump} --xla_dump_hlo_as_text"
    return {**env, "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " " + flags).strip()}


def child_result(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """The last ``RESULT {json}`` line a benchmark's ``--single`` child process prints, or
    ``{"error": ...}`` with the end of its stderr (or the timeout). Each configuration runs in
    a process of its own, so one's memory and compiled functions never touch another's."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][-300:]}
    return json.loads(lines[-1][len("RESULT ") :])


def interleaved_times(steps: dict, rounds: int, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each ``{name: step}`` (a compiled step returning tensors, read back
    so the time includes the work): ``reps`` calls each, in ``rounds`` interleaved rounds, so a
    machine's drift touches every variant alike."""
    import time

    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(reps):
                start = time.perf_counter()
                [t.numpy() for t in step()]
                times[name].append(time.perf_counter() - start)
    return times


def median_ms(times: dict[str, list[float]]) -> dict[str, float]:
    """Each variant's median time in milliseconds."""
    import numpy as np

    return {name: float(np.median(v)) * 1e3 for name, v in times.items()}


def write_timings(out: str, stem: str, config: dict, times: dict, text: str) -> dict:
    """Prints ``text`` (the markdown table) and writes it to ``out/stem.md``, and the
    configuration, median milliseconds and raw times to ``out/stem.json``; returns the medians."""
    median = median_ms(times)
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump({"config": config, "median_ms": median, "times_s": times}, f, indent=1)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(text + "\n")
    return median


def loss_step(tokens: int, dim: int, vocab_size: int, loss_fn):
    """A jit-compiled forward+backward of ``loss_fn(x, w, y)`` on seeded inputs (hidden states
    ``[tokens, dim]``, a centers variable ``[vocab_size, dim]``, labels), returning scalars (a
    sparse center gradient summed over its rows, never made dense). Not traced yet: the caller
    traces it (the reference-point bench inside its swap)."""
    import tensorflow as tf

    x = tf.random.stateless_normal([tokens, dim], seed=[0, 1])
    w = tf.Variable(tf.random.stateless_normal([vocab_size, dim], seed=[0, 2]))
    y = tf.random.stateless_uniform([tokens], [0, 3], 0, vocab_size, tf.int32)

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(x, w, y)
        gx, gw = tape.gradient(loss, [x, w])
        gw = gw.values if isinstance(gw, tf.IndexedSlices) else gw
        return loss, tf.reduce_sum(gx), tf.reduce_sum(gw)

    return step
