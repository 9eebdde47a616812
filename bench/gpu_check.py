"""The one GPU check, for a machine with one CUDA GPU, its own torch and triton (pytest and hypothesis
for the kernel tests), no network, and this tree:

    python -m bench.gpu_check --out $OUT [--data_path dataset] [--budget 360]

It prints the versions first, then runs each part under a time limit, all within --budget seconds:
  kernels    tests/test_kernels.py on the GPU (TRITON_INTERPRET=0): the fused kernel against the
             float64 reference, forward and backward, every shape the tests draw
  bench      bench/kernel.py: eager, torch.compile and the fused kernel, GB/s against the floor
  train      train.py --dataset ml-100k --device cuda for 3 epochs with --kernels torch, then triton:
             seconds per epoch, valid and test metrics
  torchrun   torchrun --nproc_per_node 1 train.py --device cuda (nccl), 1 epoch
and writes --out/gpu.md (the figures) and --out/gpu.json (each part's seconds and log). The machine
has no network: ml-100k must be in --data_path (carry dataset/ml-100k with the tree; the check
refuses to start without it). No GPU, a missing dataset or module, a part that fails or runs out of
time: named, and the exit status is 1. It exits 0 only when every part ran and passed.

--dry_run checks the same plan without running it (a CPU machine): the preconditions, and that each
part's program answers --help or pytest's --collect-only; tests/test_gpu_check.py runs it so.
"""
import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ML100K = ("ml-100k.inter", "ml-100k.item")  # what the attribute KG's run reads


def parts(out, data_path):
    """(name, time limit in seconds, command): the check, in order, cheapest and most telling first."""
    py, runs = sys.executable, os.path.join(out, "runs")
    train = [py, "train.py", "--dataset", "ml-100k", "--data_path", data_path, "--device", "cuda", "--overwrite"]
    sh = lambda words: " ".join(map(shlex.quote, words))
    return [
        ("kernels", 150, [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py"]),
        ("bench", 90, [py, "-m", "bench.kernel", "--reps", "10"]),
        ("train", 150, ["sh", "-c", " && ".join(sh(train + ["--epochs", "3", "--kernels", k, "--out_dir",
                                                              os.path.join(runs, k)]) for k in ("torch", "triton"))]),
        ("torchrun", 90, [py, "-m", "torch.distributed.run", "--nproc_per_node", "1", "train.py", *train[2:],
                          "--epochs", "1", "--out_dir", os.path.join(runs, "torchrun")]),
    ]


def preconditions(data_path):
    """What the machine must have, as {check: None (there) or why not}; the versions it has."""
    probe = ("import platform, torch, triton; cuda = torch.cuda.is_available(); "
             "p = torch.cuda.get_device_properties(0) if cuda else None; "
             "print(f'python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
             "triton {triton.__version__}; ' + (f'{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}' "
             "if cuda else 'no CUDA device'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    versions = out.stdout.strip() or (out.stderr.strip().splitlines() or ["python did not answer"])[-1]
    missing = [f for f in ML100K if not os.path.isfile(os.path.join(data_path, "ml-100k", f))]
    return {
        "torch and triton": None if out.returncode == 0 else versions,
        "a CUDA GPU": None if out.returncode == 0 and "no CUDA device" not in versions else "no CUDA device here",
        "ml-100k": None if not missing else f"{os.path.join(data_path, 'ml-100k')} lacks {', '.join(missing)}: this "
                   "machine has no network; carry dataset/ml-100k with the tree (or pass --data_path)",
        "pytest and hypothesis": None if subprocess.run([sys.executable, "-c", "import pytest, hypothesis"],
                                                        capture_output=True).returncode == 0 else "not installed",
    }, versions


def run_part(name, limit, cmd, logs, dry_run):
    """One part: (ok, seconds, the log's last lines). A dry run runs the program's --help instead."""
    if dry_run:
        cmd = cmd + ["--collect-only"] if "pytest" in cmd else \
            ["sh", "-c", cmd[2].split(" && ")[0] + " --help"] if cmd[0] == "sh" else cmd[:3] + ["--help"]
    t0 = time.time()
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        ok, text = done.returncode == 0, done.stdout + done.stderr
        if ok and "pytest" in cmd and not dry_run and not re.search(r"\b\d+ passed", text):
            ok, text = False, text + "\n(no test passed: all skipped, or none collected)"  # tested nothing is no pass
        if not ok:
            text += f"\n(exit status {done.returncode})"
    except subprocess.TimeoutExpired as e:
        ok, text = False, f"{e.stdout or ''}{e.stderr or ''}\n(timed out after {limit} s)"
    except OSError as e:
        ok, text = False, f"cannot run {cmd[0]}: {e}"
    with open(os.path.join(logs, f"{name}.log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + text)
    return ok, time.time() - t0, [ln for ln in text.splitlines() if ln.strip()][-40:]


def report(out, versions, checks, results):
    """gpu.md: what ran, what failed, and the figures."""
    lines = ["# The GPU check (bench/gpu_check.py)", "", f"{platform.node()}: {versions}", ""]
    lines += [f"* **FAILED**: {c}: {why}" for c, why in checks.items() if why]
    for name, r in results.items():
        lines += ["", f"## {name}: {'ok' if r['ok'] else 'FAILED'} in {r['seconds']:.0f} s", "", "```", *r["tail"], "```"]
    for k in ("torch", "triton", "torchrun"):
        path = os.path.join(out, "runs", k, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                r = json.load(f)
            train = [e - v for e, v in zip(r["epoch_seconds"], r["eval_seconds"])]
            lines += ["", f"ml-100k on cuda, --kernels {r['kernels']['memory']} ({k}): train s per epoch "
                      + ", ".join(f"{t:.2f}" for t in train) + f"; test ndcg@10 {r['test'].get('ndcg@10', float('nan')):.4f}"]
    with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check", help="folder for gpu.md, gpu.json, logs")
    ap.add_argument("--data_path", default="dataset", help="the folder that holds ml-100k/")
    ap.add_argument("--budget", type=int, default=360, help="seconds for all the parts")
    ap.add_argument("--dry_run", action="store_true", help="check the plan, run no part")
    args = ap.parse_args(argv)
    out, data_path = os.path.abspath(args.out), os.path.abspath(os.path.join(ROOT, args.data_path))
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    checks, versions = preconditions(data_path)
    print(f"gpu_check: {versions}", flush=True)
    for check, why in checks.items():
        print(f"gpu_check: {check}: " + (f"FAILED: {why}" if why else "there"), flush=True)
    results, start = {}, time.time()
    if not any(checks.values()) or args.dry_run:
        for name, limit, cmd in parts(out, data_path):
            limit = min(limit, args.budget - (time.time() - start))
            if limit < 10:
                results[name] = dict(ok=False, seconds=0, tail=[f"no time left of the {args.budget} s budget"])
            else:
                ok, seconds, tail = run_part(name, int(limit), cmd, logs, args.dry_run)
                results[name] = dict(ok=ok, seconds=seconds, tail=tail)
            print(f"gpu_check: {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']:.0f} s"
                  + ("" if results[name]["ok"] else "\n  " + "\n  ".join(results[name]["tail"][-8:])), flush=True)
    report(out, versions, checks, results)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(dict(versions=versions, checks=checks, parts=results, dry_run=args.dry_run), f, indent=1)
    failed = [c for c, why in checks.items() if why] + [n for n, r in results.items() if not r["ok"]]
    ran = len(results) == len(parts(out, data_path)) and not failed
    said = "the plan holds (a dry run: nothing measured)" if args.dry_run else "every part passed"
    print(f"gpu_check: {said if ran else 'FAILED: ' + ', '.join(failed or ['no part ran'])}; {out}/gpu.md", flush=True)
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
