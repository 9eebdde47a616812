"""Scale benchmark: data, training and evaluation at 1M, 5M and 20M interactions.

    python -m bench.scale [--sizes 1m 5m 20m] [--data_path dataset] [--max_steps 20] [--json F]

For each size, on the synthetic dataset extras/synthetic.py writes (once; ML-1M's and ML-20M's
counts), every stage runs as its own process under /usr/bin/time -v, so its wall seconds
and peak RSS are its own:

  data first   `python -m extras.prepare` with no cached KG vectors: read, remap, split, TransE, write
  data cached  the same again: the vectors are read back from the files
  train        `python train.py --epochs 1 --max_steps S` in both modes: S training batches,
               then a full-ranking evaluation of every valid and every test user

Seconds per batch are train.py's over the S batches, its first (warm-up) batch included.
Last, in this process, a sequence-mode step at each size's item and relation count, a
default batch of full windows, timed over 20 steps after a warm-up, and the frozen-KG memory write inside it
(kernels.fast_torch.sorted_memory_write) alone. An epoch's seconds are a step's times the
batches in an epoch: an estimate, marked "est.". The table ends with each step's growth
exponent between the smallest and largest size (t ~ n^e).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from extras import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project: train.py, data.py


def timed(cmd, env=None):
    """Run cmd under /usr/bin/time -v: (wall seconds, peak RSS in GB, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_scale.py: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 2 ** 20
    return wall, rss, proc.stdout


def data_stage(name, data_path, first):
    folder = os.path.join(data_path, name)
    if first:  # no cached vectors: TransE runs
        for f in os.listdir(folder):
            if ".ent_feature" in f or ".rel_feature" in f:
                os.remove(os.path.join(folder, f))
    wall, rss, out = timed([sys.executable, "-m", "extras.prepare", "--dataset", name, "--data_path", data_path, "--json"])
    return {"s": wall, "rss_gb": rss, "stats": json.loads(out.strip().splitlines()[-1])}


def train_stage(name, data_path, mode, steps):
    with tempfile.TemporaryDirectory() as out:
        wall, rss, _ = timed([sys.executable, "train.py", "--dataset", name, "--data_path", data_path, "--train_mode", mode,
                              "--epochs", "1", "--max_steps", str(steps), "--out_dir", out])
        with open(os.path.join(out, "results.json")) as f:
            res = json.load(f)
    batch = res["config"]["train_batch_size"]
    per_batch = (res["epoch_seconds"][0] - res["eval_seconds"][0]) / steps
    n_batches = math.ceil(res["train_samples"] / batch)
    return {"s": wall, "rss_gb": rss, "batch_s": per_batch, "batches": n_batches, "epoch_s_est": per_batch * n_batches,
            "valid_eval_s": res["eval_seconds"][0], "test_eval_s": res["test_seconds"], "valid_users": res["dataset"]["valid_samples"]}


def memory_write_share(n_items, n_relations, reps=20):
    """Seconds of one sequence-mode training step (a default batch of windows x 50 steps), and of
    the memory write inside it alone."""
    import kernels
    import train
    cfg = vars(train.parse_args(["--train_mode", "sequence"]))
    torch.manual_seed(0)
    ds = type("DS", (), {"n_items": n_items, "item_kg": np.random.randn(n_items + 1, 64).astype(np.float32),
                         "relation_kg": np.random.randn(n_relations, 64).astype(np.float32)})
    model = train.build_model(cfg, ds)
    opt = train.make_optimizer(model, cfg)
    B = cfg["train_batch_size"]
    seq = torch.randint(1, n_items + 1, (B, 50))
    lengths = torch.full((B,), 50)
    targets = torch.randint(1, n_items + 1, (B, 50))

    def step():
        loss = model(seq, lengths, targets, all_steps=True)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def clock(fn):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps
    with torch.no_grad():
        write = clock(lambda: kernels.fast_torch.sorted_memory_write(model.entity_embedding(seq), lengths, model.relations, True))
    return {"step_s": clock(step), "write_s": write}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1m", "5m", "20m"], choices=list(synthetic.PRESETS))
    ap.add_argument("--data_path", default="dataset")
    ap.add_argument("--max_steps", type=int, default=20)
    ap.add_argument("--json", help="also write the measurements here")
    ap.add_argument("--table", metavar="JSON", help="only print the table of an earlier run's --json")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            return print_table(json.load(f))
    rows = {}
    for size in args.sizes:
        name = f"syn-{size}"
        r = rows[size] = {}
        if not os.path.isdir(os.path.join(args.data_path, name)):
            t0 = time.perf_counter()
            synthetic.generate(name, args.data_path, size=size, log=lambda m: None)
            r["generate_s"] = time.perf_counter() - t0
        r["data_first"] = data_stage(name, args.data_path, first=True)
        r["data_cached"] = data_stage(name, args.data_path, first=False)
        stats = r["data_cached"]["stats"]
        for mode in ("sequence", "prefix"):
            r[mode] = train_stage(name, args.data_path, mode, args.max_steps)
        r["memory"] = memory_write_share(stats["items"], stats["relations"])
        r["interactions"] = stats["interactions"]
        print(f"{size}: {json.dumps(r)}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    print_table(rows)


def print_table(rows):
    sizes = list(rows)
    n = [rows[s]["interactions"] for s in sizes]
    lines = [("data.py, first run (TransE): s", lambda r: r["data_first"]["s"]),
             ("data.py, first run: peak RSS GB", lambda r: r["data_first"]["rss_gb"]),
             ("data.py, cached: s", lambda r: r["data_cached"]["s"]),
             ("data.py, cached: peak RSS GB", lambda r: r["data_cached"]["rss_gb"])]
    for mode in ("sequence", "prefix"):
        lines += [(f"{mode}: s per training batch (train.py, {mode} defaults)", lambda r, m=mode: r[m]["batch_s"])]
        if mode == "sequence":
            lines += [("sequence: s per step, warm (a batch of windows of 50)", lambda r: r["memory"]["step_s"]),
                      ("sequence: s per epoch (est.: batches x warm step)", lambda r: r["sequence"]["batches"] * r["memory"]["step_s"])]
        else:
            lines += [("prefix: s per epoch (est.: batches x s per batch)", lambda r: r["prefix"]["epoch_s_est"])]
        lines += [(f"{mode}: valid evaluation s (every valid user, all items)", lambda r, m=mode: r[m]["valid_eval_s"]),
                  (f"{mode}: train.py peak RSS GB (data, training, evaluation)", lambda r, m=mode: r[m]["rss_gb"])]
    lines += [("frozen-KG memory write: share of a sequence step", lambda r: r["memory"]["write_s"] / r["memory"]["step_s"])]
    print("| step | " + " | ".join(f"{x:,} interactions" for x in n) + " | exponent |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for label, get in lines:
        v = [get(rows[s]) for s in sizes]
        e = math.log(v[-1] / v[0]) / math.log(n[-1] / n[0]) if len(v) > 1 and v[0] > 0 and v[-1] > 0 else float("nan")
        print(f"| {label} | " + " | ".join(f"{x:.3g}" for x in v) + f" | {e:.2f} |")


if __name__ == "__main__":
    main()
