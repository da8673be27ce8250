"""The output layer's forward+backward at the reference point, this checkout side by side with
another one (a release, a branch): each configuration runs in its own process through each
checkout's own ``bench_loss.py --single``, in interleaved rounds.

    git worktree add /tmp/base 7a45d88
    python benchmarks/bench_revisions.py --base-tree /tmp/base --rounds 3

Writes revisions.json and revisions.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from _common import REFERENCE, child_result, machine

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = (
    "dense_ce_xla,harmonic_dense_xla,harmonic_chunked_xla,harmonic_two_pass_xla,"
    "tf_sampled_softmax,sampled_shared_xla,sampled_default_xla"
)


def run(tree: str, name: str, args) -> dict:
    """One configuration by ``tree``'s ``bench_loss.py``, with its package first on the path."""
    root = os.path.abspath(tree)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    point = ["--n", args.n, "--d", args.d, "--v", args.v, "--k", args.k, "--chunk-size", args.chunk]
    cmd = [sys.executable, os.path.join(root, "benchmarks", "bench_loss.py"), "--single", name]
    cmd += [str(a) for a in point] + ["--warmup", "1", "--reps", str(args.reps)]
    return child_result(cmd, env=env)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-tree", required=True, help="the other checkout")
    p.add_argument("--configs", default=CONFIGS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    for key in ("n", "d", "v", "k"):
        p.add_argument(f"--{key}", type=int, default=REFERENCE[key])
    p.add_argument("--chunk", type=int, default=REFERENCE["chunk"])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    trees = {"this": os.path.join(HERE, ".."), "base": args.base_tree}
    names = args.configs.split(",")
    steps = {(tree, name): [] for tree in trees for name in names}
    for r in range(args.rounds):
        for name in names:
            for tree, path in trees.items():
                result = run(path, name, args)
                steps[tree, name].append(result.get("median_s"))
                print(f"round {r + 1} {tree} {name}: {result}", flush=True)
    rows = []
    for name in names:
        med = {}
        for tree in trees:
            ok = [s for s in steps[tree, name] if s is not None]
            med[tree] = statistics.median(ok) if ok else None
        ratio = med["this"] / med["base"] if med["this"] and med["base"] else None
        rows.append({"name": name, "this_s": med["this"], "base_s": med["base"], "ratio": ratio,
                     "rounds": {t: steps[t, name] for t in trees}})  # fmt: skip
    info = machine()
    point = f"N={args.n}, D={args.d}, V={args.v:,}, k={args.k}, chunk {args.chunk}"
    text = [
        f"Machine: {info['cpu']}, {info['cores']} cores; TensorFlow {info['tensorflow']}; "
        f"base: `{os.path.abspath(args.base_tree)}`; {point}; median of {args.rounds} "
        "interleaved rounds (each a median of its steps)",
        "",
        "| configuration | this checkout (ms) | base (ms) | this / base |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row[k] * 1000:,.1f}" if row[k] else "failed" for k in ("this_s", "base_s")]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"
        text.append(f"| {row['name']} | {cells[0]} | {cells[1]} | {ratio} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "revisions.json"), "w") as f:
        json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "revisions.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))
    return {"rows": rows}


if __name__ == "__main__":
    main()
