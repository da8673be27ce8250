"""Speed and memory of the output layer's forward+backward (gradients for hidden states and
centers), ours against the baselines users would pick instead.

Each configuration runs in its own subprocess, so its memory is its own. Step time is the median
over repeated steps after warm-up. Memory is read two ways: the process's peak resident set above
its baseline (taken after the inputs exist, so the compiler's own memory is in it), and, for XLA
configurations, XLA's buffer assignment of the compiled step (temporaries plus outputs; what a
step allocates: the compiled step keeps that arena, so the resident set after warm-up hides it).

Every row stands next to its floors. Time: the loss's matmul FLOPs (6 N V D for the exact loss
and cross-entropy, whatever the path) at this machine's matmul rate, measured in the same run
(``matmul_rate_xla``: the three products of a cross-entropy step at the reference point).
Memory: the unavoidable buffers, the ``[V, D]`` center gradient plus one logits block
(``[N, chunk]`` chunked, ``[N, V]`` dense, the candidate columns sampled).

    python benchmarks/bench_loss.py                 # reference point + V, N and k sweeps
    python benchmarks/bench_loss.py --reference-only
    python benchmarks/bench_loss.py --single sampled_shared_xla --n 4096 --d 512 --v 50257 --k 256

--n, --d, --v, --k and --chunk-size move the reference point (default N=4096, D=512, V=50,257,
k=256, chunk 2048); each sweep changes one coordinate of it.

Writes results.json, results.md, time_vs_v.png and memory_vs_v.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

from _common import (
    CHUNK,
    CONFIGS,
    REFERENCE,
    child_result,
    floor_bytes,
    inputs,
    loss_and_grads,
    machine,
    matmul_flops,
    read_dump,
    with_dump_flags,
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps(step, warmup: int, reps: int, max_seconds: float) -> tuple[list[float], float]:
    """Step times after ``warmup`` steps, and the peak resident set above the one before the
    first step (MB)."""
    baseline = _rss_mb()
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 2 or time.perf_counter() - start < max_seconds):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times, _peak_rss_mb() - baseline


def run_single(
    name: str,
    n: int,
    d: int,
    v: int,
    k: int,
    warmup: int,
    reps: int,
    max_seconds: float,
    chunk: int = CHUNK,
) -> dict:
    """One configuration in this process; returns median step seconds and peak memory."""
    if name == "torch_prototype":
        return _run_torch(n, d, v, k, warmup, reps, max_seconds)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    jit = name.endswith("_xla")
    x, w, y = inputs(n, d, v)
    step_fn = tf.function(loss_and_grads(name, x, w, y, k, chunk), jit_compile=jit)
    times, peak = _time_steps(lambda: [t.numpy() for t in step_fn()], warmup, reps, max_seconds)
    return {"median_s": float(np.median(times)), "steps": len(times), "peak_mb": peak}


def _run_torch(n, d, v, k, warmup, reps, max_seconds):
    import importlib.util

    import numpy as np
    import torch

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "shared", "reference", "harmonic_loss_approx_torch.py")
    spec = importlib.util.spec_from_file_location("harmonic_loss_approx_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    x = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.05).requires_grad_()
    y = torch.randint(0, v, (n,))

    def step():
        x.grad = None
        w.grad = None
        loss = module.harmonic_loss_approx(x, w, y, eta=float(np.sqrt(d)), k=k)
        loss.backward()
        return float(loss)

    times, peak = _time_steps(step, warmup, reps, max_seconds)
    return {"median_s": float(np.median(times)), "steps": len(times), "peak_mb": peak}


def _subprocess(name, n, d, v, k, chunk, args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--single",
        name,
        "--n",
        str(n),
        "--d",
        str(d),
        "--v",
        str(v),
        "--k",
        str(k),
        "--chunk-size",
        str(chunk),
        "--warmup",
        str(args.warmup),
        "--reps",
        str(args.reps),
        "--max-seconds",
        str(args.max_seconds),
    ]

    with tempfile.TemporaryDirectory() as dump:
        env = with_dump_flags(dict(os.environ), dump) if name.endswith("_xla") else None
        result = child_result(cmd, env=env, timeout=args.timeout)
        if "error" in result:
            return result
        if name.endswith("_xla"):
            plan = read_dump(dump)
            result["plan_mb"] = (plan["temp_bytes"] + plan["output_bytes"]) / 2**20
        return result


def _have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def plan(args, ref: dict) -> list[tuple[str, dict]]:
    names = [c for c in CONFIGS if c != "torch_prototype" or _have_torch()]
    jobs = [(name, dict(ref)) for name in names]
    # Chunk size trades the exact loss's speed against its memory.
    for chunk in (2 * ref["chunk"], 4 * ref["chunk"]):
        jobs += [("harmonic_chunked_xla", dict(ref, chunk=chunk))]
    if args.reference_only:
        return jobs
    sweep_v = [8192, 32768, 50257, 131072, 262144]
    v_configs = [
        "dense_ce_xla",
        "tf_sampled_softmax",
        "harmonic_dense_xla",
        "harmonic_chunked_xla",
        "sampled_shared_xla",
    ]
    for v in sweep_v:
        if v != ref["v"]:
            jobs += [(name, dict(ref, v=v)) for name in v_configs]
    for n in (1024, 16384):
        jobs += [
            (name, dict(ref, n=n))
            for name in (
                "dense_ce_xla",
                "harmonic_chunked_xla",
                "sampled_shared_xla",
                "tf_sampled_softmax",
            )
        ]
    for k in (64, 1024):
        jobs += [
            (name, dict(ref, k=k))
            for name in ("sampled_shared_xla", "tf_sampled_softmax", "sampled_per_example_xla")
        ]
    return jobs


def matmul_rate(rows: list[dict]) -> float | None:
    """FLOP/s of this run's matmul-rate row (None when it did not run)."""
    for r in rows:
        if r["name"] == "matmul_rate_xla" and "median_s" in r:
            return matmul_flops(r["name"], **r["point"]) / r["median_s"]
    return None


def with_floors(rows: list[dict]) -> list[dict]:
    """Rows with ``floor_s`` (their matmul FLOPs at this run's rate) and ``floor_mb``."""
    rate = matmul_rate(rows)
    out = []
    for r in rows:
        r = dict(r, floor_mb=floor_bytes(r["name"], **r["point"]) / 2**20)
        if rate:
            r["floor_s"] = matmul_flops(r["name"], **r["point"]) / rate
        out.append(r)
    return out


def ratios(rows: list[dict], ref: dict) -> dict:
    rows = with_floors(rows)
    at_ref = {r["name"]: r for r in rows if r["point"] == ref and "median_s" in r}

    # "dense cross-entropy" is whichever of its graph and XLA variants is faster here.
    ce = [at_ref[c] for c in ("dense_ce", "dense_ce_xla") if c in at_ref]
    if ce:
        at_ref["dense_ce_best"] = min(ce, key=lambda r: r["median_s"])

    def ratio(a, b, key="median_s"):
        if a in at_ref and b in at_ref:
            return at_ref[a][key] / at_ref[b][key]
        return None

    def over_floor(a, key):
        floor = "floor_s" if key == "median_s" else "floor_mb"
        if a in at_ref and floor in at_ref[a] and key in at_ref[a]:
            return at_ref[a][key] / at_ref[a][floor]
        return None

    return {
        "sampled_shared_xla / tf_sampled_softmax (time, target <= 0.7)": ratio(
            "sampled_shared_xla", "tf_sampled_softmax"
        ),
        "dense cross-entropy / sampled_shared_xla (speed-up, target >= 25)": ratio(
            "dense_ce_best", "sampled_shared_xla"
        ),
        "harmonic_chunked_xla / harmonic_dense_xla (memory, target <= 0.25)": ratio(
            "harmonic_chunked_xla", "harmonic_dense_xla", "peak_mb"
        ),
        "harmonic_chunked_xla (fused) / dense cross-entropy (time, target <= 1.1)": ratio(
            "harmonic_chunked_xla", "dense_ce_best"
        ),
        "harmonic_two_pass_xla / dense cross-entropy (time)": ratio(
            "harmonic_two_pass_xla", "dense_ce_best"
        ),
        "harmonic_dense_xla / dense cross-entropy (time)": ratio(
            "harmonic_dense_xla", "dense_ce_best"
        ),
        "harmonic_chunked_xla (fused) XLA memory / floor (target <= 1.5)": over_floor(
            "harmonic_chunked_xla", "plan_mb"
        ),
        "harmonic_two_pass_xla XLA memory / floor (target <= 1.5)": over_floor(
            "harmonic_two_pass_xla", "plan_mb"
        ),
        "sampled_shared_xla time / its FLOP floor": over_floor("sampled_shared_xla", "median_s"),
        "sampled_default_xla time / its FLOP floor": over_floor("sampled_default_xla", "median_s"),
        "tf_sampled_softmax time / its FLOP floor": over_floor("tf_sampled_softmax", "median_s"),
        "torch_prototype / sampled_shared_xla (time)": ratio(
            "torch_prototype", "sampled_shared_xla"
        ),
        "torch_prototype / harmonic_chunked_xla (memory)": ratio(
            "torch_prototype", "harmonic_chunked_xla", "peak_mb"
        ),
    }


def markdown(rows, info, command, ref: dict) -> str:
    rate = matmul_rate(rows)
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; TensorFlow {info['tensorflow']}; "
        f"command: `{command}`",
        "",
        "Floors: time = the loss's matmul FLOPs at this run's matmul rate "
        + (f"({rate / 1e9:,.0f} GFLOP/s, `matmul_rate_xla`)" if rate else "(not measured)")
        + "; memory = the [V, D] center gradient plus one logits block. XLA memory: the "
        "compiled step's buffer assignment, temporaries plus outputs; peak RSS: the process's "
        "peak resident set above its baseline, compiler included.",
        "",
        "| configuration | N | D | V | k | chunk | rounds | step (ms) | time floor (ms) | x floor "
        "| XLA memory (MB) | memory floor (MB) | x floor | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # The reference point first (its chunk sweep included), then the sweeps in run order.
    at_ref = [r for r in rows if {**r["point"], "chunk": ref["chunk"]} == ref]
    for r in with_floors(at_ref + [r for r in rows if r not in at_ref]):
        p = r["point"]
        chunk = p["chunk"] if "chunk" in r["name"] or "two_pass" in r["name"] else "-"
        if "median_s" in r:
            floor_s = r.get("floor_s")
            cells = f"{r['median_s'] * 1000:,.1f} | " + (
                f"{floor_s * 1000:,.1f} | {r['median_s'] / floor_s:.2f}" if floor_s else "- | -"
            )
            plan = r.get("plan_mb")
            cells += f" | {plan:,.0f}" if plan is not None else " | -"
            cells += f" | {r['floor_mb']:,.0f} | "
            cells += f"{plan / r['floor_mb']:.2f}" if plan is not None else "-"
            cells += f" | {r['peak_mb']:,.0f}"
        else:
            cells = f"failed: {r['error']} | - | - | - | - | - | -"
        lines.append(
            f"| {r['name']} | {p['n']} | {p['d']} | {p['v']:,} | {p['k']} | {chunk} | "
            f"{len(r.get('round_median_s', [0]))} | {cells} |"
        )
    point = ", ".join(f"{key}={value:,}" for key, value in ref.items())
    lines += ["", f"Ratios at the reference point ({point}):", ""]
    for key, value in ratios(rows, ref).items():
        lines.append(f"- {key}: " + ("n/a" if value is None else f"{value:.3f}"))
    return "\n".join(lines)


def plots(rows, out_dir, info, command, ref: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v_rows = [r for r in rows if "median_s" in r and {**r["point"], "v": ref["v"]} == ref]
    rate = matmul_rate(rows)
    import textwrap

    stamp = f"{info['cpu']} ({info['cores']} cores), TF {info['tensorflow']}\n" + "\n".join(
        textwrap.wrap(command, 190)
    )
    for key, label, filename in (
        ("median_s", "forward+backward step (s)", "time_vs_v.png"),
        ("plan_mb", "XLA memory of the step: temporaries + outputs (MB)", "memory_vs_v.png"),
    ):
        fig, ax = plt.subplots(figsize=(8, 5))
        for name in CONFIGS:
            pts = sorted(
                (r["point"]["v"], r[key]) for r in v_rows if r["name"] == name and key in r
            )
            if len(pts) > 1:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        vs = sorted({r["point"]["v"] for r in v_rows})
        if key == "median_s" and rate:
            ax.plot(
                vs,
                [matmul_flops("harmonic_chunked", **dict(ref, v=v)) / rate for v in vs],
                "k:",
                lw=1,
                label="floor of the exact loss and cross-entropy: 6 N V D FLOPs",
            )
        if key == "plan_mb":
            ax.plot(
                vs,
                [floor_bytes("harmonic_chunked", **dict(ref, v=v)) / 2**20 for v in vs],
                "k--",
                lw=1,
                label=f"floor of the chunked loss: [V, D] + [N, {ref['chunk']}]",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vocabulary size V")
        ax.set_ylabel(label)
        ax.set_title(f"N={ref['n']}, D={ref['d']}, k={ref['k']}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.text(0.01, 0.005, stamp, fontsize=5, va="bottom")
        fig.tight_layout(rect=(0, 0.09, 1, 1))
        fig.savefig(os.path.join(out_dir, filename), dpi=120)
        plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--single", help="run one configuration in this process and print RESULT json")
    p.add_argument("--n", type=int, default=REFERENCE["n"])
    p.add_argument("--d", type=int, default=REFERENCE["d"])
    p.add_argument("--v", type=int, default=REFERENCE["v"])
    p.add_argument("--k", type=int, default=REFERENCE["k"])
    p.add_argument("--chunk-size", type=int, default=CHUNK, help="the chunked paths' chunk")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of all configurations")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=900.0, help="per configuration")
    p.add_argument("--reference-only", action="store_true")
    p.add_argument("--configs", help="comma list: only these configurations of the plan")
    p.add_argument("--min-v", type=int, default=0, help="only points with V >= this")
    p.add_argument("--update", action="store_true", help="re-measure into an existing results.json")
    p.add_argument(
        "--report-only", action="store_true", help="redraw table and plots from results.json"
    )
    p.add_argument("--out", default="benchmarks/results")
    return p


def _previous(args, path: str, command: str, ref: dict) -> tuple[list, dict, list]:
    """``(rows, reference, commands)`` to start from: those of ``results.json`` with
    ``--update`` / ``--report-only``, else none."""
    if not (args.update or args.report_only):
        return [], ref, [command]
    with open(path) as f:
        previous = json.load(f)
    rows = previous["rows"]
    for r in rows:  # rows measured before the chunk was a coordinate
        r["point"].setdefault("chunk", CHUNK)
    ref = {"chunk": CHUNK, **previous["reference"]}
    commands = previous.get("commands", [previous["command"]])
    return rows, ref, commands + ([] if args.report_only else [command])


def _measure_rounds(jobs: list, args) -> list[dict]:
    """One row per job: its median over rounds. Rounds interleave the configurations, so a
    slow spell of a shared CPU hits them alike."""
    from tqdm import tqdm

    measured: dict[int, list[dict]] = {i: [] for i in range(len(jobs))}
    bar = tqdm(total=len(jobs) * args.rounds, desc="configurations")
    for r in range(args.rounds):
        for i, (name, point) in enumerate(jobs):
            bar.set_postfix_str(f"round {r + 1}: {name} V={point['v']} N={point['n']}")
            measured[i].append(_subprocess(name, **point, args=args))
            bar.update()
    bar.close()
    rows = []
    for i, (name, point) in enumerate(jobs):
        ok = [m for m in measured[i] if "median_s" in m]
        row = {"name": name, "point": point, **(ok or measured[i])[-1]}
        if ok:
            row["median_s"] = statistics.median(m["median_s"] for m in ok)
            row["round_median_s"] = [m["median_s"] for m in ok]
        rows.append(row)
    return rows


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.single:
        point = (args.n, args.d, args.v, args.k, args.warmup, args.reps, args.max_seconds)
        result = run_single(args.single, *point, args.chunk_size)
        print("RESULT " + json.dumps(result), flush=True)
        return result
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__)), *sys.argv[1:]])
    path = os.path.join(args.out, "results.json")
    ref = {"n": args.n, "d": args.d, "v": args.v, "k": args.k, "chunk": args.chunk_size}
    rows, ref, commands = _previous(args, path, command, ref)
    jobs = [] if args.report_only else plan(args, ref)
    if args.configs:
        jobs = [job for job in jobs if job[0] in args.configs.split(",")]
    jobs = [job for job in jobs if job[1]["v"] >= args.min_v]
    for row in _measure_rounds(jobs, args):
        rows = [r for r in rows if (r["name"], r["point"]) != (row["name"], row["point"])]
        rows.append(row)
    command = " && ".join(commands)
    info = machine()
    os.makedirs(args.out, exist_ok=True)
    report = {"machine": info, "command": command, "commands": commands, "reference": ref}
    report.update(rows=rows, ratios=ratios(rows, ref))
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(rows, info, command, ref)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    plots(rows, args.out, info, command, ref)
    print(text)
    return report


if __name__ == "__main__":
    main()
