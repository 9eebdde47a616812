"""One process against torchrun, on the same machine, in one run.

    python -m bench.ddp                     # s/epoch, both training modes, 2 epochs each
    python -m bench.ddp --full              # and full default runs (early stopping), test metrics side by side
    python -m bench.ddp --full --no_timing -- --dropout_prob 0    # train.py options after --

For each training mode: `python train.py` with T threads, then `torchrun --nproc_per_node N
train.py` with T / N threads per process (T = the machine's cores), same seed and options;
seconds per epoch from each run's results.json (the median), printed side by side. With
--full, the default command trained to early stopping both ways and its test metrics. Runs
go to runs/bench-ddp-*/ (replaced on each bench run).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project: train.py


def run(nproc, threads, args, out_dir):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    script = os.path.join(ROOT, "train.py")
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    t0 = time.time()
    proc = subprocess.run(launcher + [script, *args, "--out_dir", out_dir, "--overwrite"], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_ddp.py: {nproc} process(es) failed: {proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    res["wall"] = time.time() - t0
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed per training mode")
    ap.add_argument("--full", action="store_true", help="also train the default command to early stopping both ways")
    ap.add_argument("--no_timing", action="store_true", help="skip the per-epoch timing (with --full)")
    ap.add_argument("train_args", nargs="*", help="train.py options (after --)")
    args = ap.parse_args()
    cores = os.cpu_count()
    n, per = args.nproc, max(1, cores // args.nproc)
    print(f"{cores} cores: 1 process x {cores} threads against torchrun {n} processes x {per} thread(s); "
          f"train.py {' '.join(args.train_args) or '(defaults)'}")
    print(f"{'':28}{'1 process':>12}{f'{n} processes':>14}{'ratio':>8}")
    for mode in () if args.no_timing else ("sequence", "prefix"):
        common = args.train_args + ["--train_mode", mode, "--epochs", str(args.epochs)]
        one = run(1, cores, common, os.path.join("runs", f"bench-ddp-{mode}-1"))
        many = run(n, per, common, os.path.join("runs", f"bench-ddp-{mode}-{n}"))
        s1, sn = statistics.median(one["epoch_seconds"]), statistics.median(many["epoch_seconds"])
        print(f"{mode + ' mode, s / epoch':28}{s1:>12.2f}{sn:>14.2f}{sn / s1:>8.2f}")
    if args.full:
        one = run(1, cores, args.train_args, os.path.join("runs", "bench-ddp-full-1"))
        many = run(n, per, args.train_args, os.path.join("runs", f"bench-ddp-full-{n}"))
        print(f"\nthe default command to early stopping (seed {one['config']['seed']}):")
        print(f"{'':28}{'1 process':>12}{f'{n} processes':>14}")
        rows = [("best epoch", one["best_epoch"], many["best_epoch"]), ("s / epoch", statistics.median(one["epoch_seconds"]),
                statistics.median(many["epoch_seconds"])), ("wall s", one["wall"], many["wall"])]
        rows += [(f"test {k}", one["test"][k], many["test"][k]) for k in ("ndcg@10", "hit@10", "mrr@10")]
        for name, a, b in rows:
            print(f"{name:28}{a:>12.4g}{b:>14.4g}")


if __name__ == "__main__":
    main()
