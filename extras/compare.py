"""Compare configurations over seeds, with confidence intervals and a paired test.

    python train.py compare --seeds 5 --config ksr: --config gru4rec: --no_memory --config freebase: --kg freebase
    python -m extras.compare ...             (the same)

Options before the first --config are compare's own (--seeds, --jobs, --out_dir, ...) or training
options shared by every configuration; each `--config NAME:` is followed by that configuration's
train.py options. `{seed}` in a value is replaced by the run's seed (`--transe_seed {seed}`: the
KG vectors drawn anew with each seed). Every run is a normal `python train.py` run in
<out_dir>/<NAME>/seed-<s>/ (its output in train.log there); --jobs runs go side by side with
the cores split between them. A finished run (its results.json, with the same settings) is
kept: the same command again only reports; after Ctrl-C it continues where it stopped.

The report (stdout, <out_dir>/report.md, report.json, report.png):
  per configuration and metric: the mean over seeds with a 95% t interval (over seeds), the
      per-seed values, the best epoch and the time;
  per pair (A, B): the mean difference A - B over seeds; its 95% interval from a paired
      bootstrap that resamples test users (the same users for A and B) of the per-user
      difference averaged over seeds (A and B on different users, e.g. other filters: each
      side's users resampled apart, "unpaired"); a 95% t interval of the per-seed differences;
      and the share of seeds in which A beats B. The same for the valid metric.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch

import data
import train
from extras import run_lock
from options import Parser, UsageError, cli, positive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project: train.py
METRICS = ("ndcg@10", "hit@10", "mrr@10", "recall@10")  # the report's test metrics; valid: the --valid_metric
NOT_PER_CONFIG = ("seed", "out_dir", "overwrite", "eval_only")  # compare sets these itself
TRANSE_OPTIONS = ("transe_epochs", "transe_learning_rate", "transe_seed", "transe_optimizer")


# -----------------------------------------------------------------------------
# Statistics: t intervals over seeds, a paired bootstrap over users

def t_quantile(p, df):
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom: bisection on its CDF,
    the density integrated with Simpson's rule (no scipy here). Exact to ~1e-6."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    density = lambda t: c * (1 + t * t / df) ** (-(df + 1) / 2)

    def cdf_above_half(x, n=2000):  # P(0 <= T <= x) by Simpson's rule on n intervals
        h = x / n
        s = density(0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
        return s * h / 3

    lo, hi = 0.0, 1.0
    while cdf_above_half(hi) < p - 0.5:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf_above_half(mid) < p - 0.5 else (lo, mid)
    return (lo + hi) / 2


def t_interval(values, level=0.95):
    """(mean, low, high): the mean of `values` (one per seed) and its t interval; one value: no interval (NaN)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile(0.5 + level / 2, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def bootstrap_interval(a, b=None, n_boot=10000, seed=0, level=0.95):
    """(low, high): the percentile interval of mean(a), or of mean(a) - mean(b), over `n_boot` resamples of the
    rows (users) with replacement, a's and b's apart. Paired: a (U,) is each user's difference A - B averaged over
    seeds, so every resample takes the same users in A and B and in every seed. Unpaired (b given): two
    configurations evaluated on different users (another dataset or filter)."""
    rng = np.random.default_rng(seed)
    mean_of_resamples = lambda x, n: x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    means = np.concatenate([mean_of_resamples(np.asarray(a, float), n)
                            - (0 if b is None else mean_of_resamples(np.asarray(b, float), n))
                            for n in (min(1000, n_boot - i) for i in range(0, n_boot, 1000))])  # 1,000 at a time
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def seed_mean(results, seeds, split, metric):
    """{user token: the user's `metric` on `split`, averaged over the seeds' runs} (the users all runs share)."""
    values = [dict(zip(results[s]["ranks"][split]["user"], per_user(results[s]["ranks"][split]["rank"], metric)))
              for s in seeds]
    users = [u for u in values[0] if all(u in v for v in values[1:])]
    return {u: float(np.mean([v[u] for v in values])) for u in users}


def per_user(ranks, metric):
    """Each user's value of `metric` (e.g. "ndcg@10") from their rank of the target (train.user_metrics)."""
    name, k = metric.split("@")
    return train.user_metrics(torch.as_tensor(ranks), int(k))[name].numpy()


# -----------------------------------------------------------------------------
# The command line: compare's options, shared training options, one --config NAME: per configuration

def parse_command(argv):
    ap = Parser(prog="compare.py", description="Compare train.py configurations over seeds (mean and 95% intervals, "
                "paired bootstrap). Usage: compare.py [options] [shared training options] --config NAME: [its options] ...",
                allow_abbrev=False)
    ap.add_argument("--seeds", type=positive(int), default=5, help="how many seeds (default 5): first_seed, first_seed + 1, ...")
    ap.add_argument("--first_seed", type=int, default=2020)
    ap.add_argument("--jobs", type=positive(int), default=None, help="runs side by side (default: one per core)")
    ap.add_argument("--out_dir", default=None, help="default runs/compare-<config names>")
    ap.add_argument("--n_boot", type=positive(int), default=10000, help="bootstrap resamples (default 10000)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    ap.add_argument("--no_run", action="store_true", help="only report the runs that are finished")
    if "-h" in argv or "--help" in argv:
        ap.parse_args(["--help"])  # prints compare's options and exits
    if "--config" not in argv:
        ap.error("no --config: give at least two, e.g. --config ksr: --config gru4rec: --no_memory")
    first = argv.index("--config")
    args, shared = ap.parse_known_args(argv[:first])
    configs, i = {}, first
    while i < len(argv):
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            ap.error("--config: expected a name after it, e.g. --config ksr:")
        name = argv[i + 1].rstrip(":")
        j = i + 2
        while j < len(argv) and argv[j] != "--config":
            j += 1
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            ap.error(f"--config {argv[i + 1]}: a name is letters, digits, '-', '_' and '.' (it names a folder)")
        if name in configs:
            ap.error(f"--config {name}: given twice")
        configs[name] = argv[i + 2:j]
        i = j
    if len(configs) < 2:
        ap.error("one --config: a comparison needs at least two")
    for name, opts in configs.items():
        for o in opts + shared:
            if o.startswith("--") and o[2:].split("=")[0] in NOT_PER_CONFIG:
                ap.error(f"--config {name}: {o.split('=')[0]} is set by compare.py (--seeds, --first_seed, --out_dir)")
    return args, shared, configs


def run_argv(shared, opts, seed, run_dir):
    """train.py's command line for one run."""
    return [a.replace("{seed}", str(seed)) for a in shared + opts] + ["--seed", str(seed), "--out_dir", run_dir, "--overwrite"]


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -----------------------------------------------------------------------------
# Running: every configuration x seed, --jobs at a time, finished runs kept

def plan(args, shared, configs, out_dir):
    """[(name, seed, run_dir, argv, cfg or error)]: every run, its options checked by train.py's own parser
    before anything runs (a configuration with a bad option fails alone, in one line)."""
    runs = []
    for name, opts in configs.items():
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_dir = os.path.join(out_dir, name, f"seed-{seed}")
            argv = run_argv(shared, opts, seed, run_dir)
            try:
                cfg, error = vars(train.parse_args(argv)), None
                if cfg["eval_only"]:
                    raise UsageError("train.py: error: --eval_only: compare trains")
                if 10 not in cfg["topk"] or any(m.split("@")[0] not in {x.lower() for x in cfg["metrics"]} for m in METRICS):
                    raise UsageError("train.py: error: --topk/--metrics: compare reports NDCG, Hit, MRR and Recall @10: "
                                     "keep them in --metrics and 10 in --topk")
            except UsageError as e:
                cfg, error = None, str(e).splitlines()[0].replace("train.py: error: ", "")
            runs.append(dict(name=name, seed=seed, run_dir=run_dir, argv=argv, cfg=cfg, error=error))
    return runs


def finished(run):
    """The run's results, if it finished earlier with the same settings; None if it has to run."""
    path = os.path.join(run["run_dir"], "results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        # the same settings: every option both know (an option newer than the run: as it ran), but not the folder
        # itself (a comparison's folder can be moved or copied whole) nor where a value was given (file, command line),
        # nor TransE's settings in a run that reads no KG vectors (--no_memory: GRU4Rec)
        ignored = ("out_dir", "config_sources") + (TRANSE_OPTIONS if run["cfg"]["no_memory"] else ())
        same = lambda cfg: {k: v for k, v in cfg.items() if k in res["config"] and k in run["cfg"] and k not in ignored}
        saved = same(res["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"compare.py: error: {path}: not a run's results ({type(e).__name__}); remove it to run again") from None
    if saved != same(run["cfg"]):
        raise UsageError(f"compare.py: error: {run['run_dir']} holds a run with other settings; use a new --out_dir "
                         f"for a different comparison")
    return res


def execute(runs, jobs, log):
    """Run what is not finished, `jobs` at a time, each on cores // jobs threads. Fills run["results"] or
    run["error"]. Ctrl-C stops the running ones (their finished files are complete) and is raised again."""
    todo = []
    for run in runs:
        if run["error"] is None:
            run["results"] = finished(run)
            if run["results"] is None:
                todo.append(run)
    threads = max(1, cores() // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done_before = sum(1 for r in runs if r.get("results"))
    log(f"compare: {len(runs)} runs ({done_before} finished earlier), {len(todo)} to run, {jobs} at a time on "
        f"{threads} thread{'s' * (threads > 1)} each")
    running, n_done, t0 = [], 0, time.time()
    try:
        while todo or running:
            while todo and len(running) < jobs:
                run = todo.pop(0)
                os.makedirs(run["run_dir"], exist_ok=True)
                logf = open(os.path.join(run["run_dir"], "train.log"), "w")
                run["proc"] = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py")] + run["argv"], env=env,
                                               stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                run["log"], run["started"] = logf, time.time()
                running.append(run)
            time.sleep(0.2)
            for run in [r for r in running if r["proc"].poll() is not None]:
                running.remove(run)
                run["log"].close()
                n_done += 1
                rc, took = run["proc"].returncode, time.time() - run["started"]
                if rc == 0:
                    run["results"] = finished(run)
                    t = run["results"]["test"]
                    log(f"  [{n_done}/{n_done + len(todo) + len(running)}] {run['name']} seed {run['seed']}: test ndcg@10 "
                        f"{t['ndcg@10']:.4f}, best epoch {run['results']['best_epoch']}, {took:.0f}s")
                else:
                    lines = [ln for ln in open(os.path.join(run["run_dir"], "train.log"), errors="replace").read().splitlines()
                             if ln.strip()]
                    run["error"] = f"exit {rc}: {lines[-1].strip() if lines else 'no output'} ({run['run_dir']}/train.log)"
                    log(f"  {run['name']} seed {run['seed']}: FAILED, {run['error']}")
    except KeyboardInterrupt:
        for run in running:  # the children saw the same Ctrl-C on a terminal; a signal makes sure
            run["proc"].send_signal(signal.SIGINT)
        for run in running:
            try:
                run["proc"].wait(30)
            except subprocess.TimeoutExpired:
                run["proc"].kill()
            run["log"].close()
        raise
    return time.time() - t0


# -----------------------------------------------------------------------------
# The report

def report(runs, valid_metric, n_boot):
    """The report dict: per configuration (mean and t interval of every metric, per-seed values, best
    epochs, seconds) and per pair (mean difference, paired-bootstrap and t intervals, share of wins)."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    ok = {n: {r["seed"]: r["results"] for r in runs if r["name"] == n and r.get("results")} for n in names}
    valid_key = valid_metric.lower()
    configs = {}
    for n in names:
        res = ok[n]
        row = {"seeds": sorted(res), "argv": next(r["argv"][:-5] for r in runs if r["name"] == n),
               "failed": {r["seed"]: r["error"] for r in runs if r["name"] == n and r["error"]}}
        if res:
            for m in METRICS:
                vals = [res[s]["test"][m] for s in row["seeds"]]
                row["test " + m] = dict(zip(("mean", "low", "high"), t_interval(vals)), per_seed=vals)
            vals = [res[s]["best_valid"][valid_key] for s in row["seeds"]]
            row["valid " + valid_key] = dict(zip(("mean", "low", "high"), t_interval(vals)), per_seed=vals)
            row["best_epoch"] = [res[s]["best_epoch"] for s in row["seeds"]]
            row["seconds"] = [res[s]["total_seconds"] for s in row["seeds"]]
            row["valid_curve"] = [[v[valid_key] for v in res[s]["valid"]] for s in row["seeds"]]
        configs[n] = row
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = sorted(set(ok[a]) & set(ok[b]))
            if not seeds:
                continue
            pair = {"a": a, "b": b, "seeds": seeds}
            # test metrics, and the valid metric (of each run's best epoch): what a choice on valid is made on
            for split, m in [("test", m) for m in METRICS] + [("valid", valid_key)]:
                va, vb = seed_mean(ok[a], seeds, split, m), seed_mean(ok[b], seeds, split, m)
                seed_diffs = [float(per_user(ok[a][s]["ranks"][split]["rank"], m).mean()
                                    - per_user(ok[b][s]["ranks"][split]["rank"], m).mean()) for s in seeds]
                paired = va.keys() == vb.keys()
                if paired:  # the same users (in any order): each user's difference, resampled together
                    low, high = bootstrap_interval([va[u] - vb[u] for u in va], n_boot=n_boot)
                else:  # other users (another dataset or filter): A's users and B's users resampled apart
                    low, high = bootstrap_interval(list(va.values()), list(vb.values()), n_boot)
                _, t_low, t_high = t_interval(seed_diffs)
                pair[m if split == "test" else "valid " + m] = {
                    "mean": float(np.mean(seed_diffs)), "low": low, "high": high, "t_low": t_low, "t_high": t_high,
                    "per_seed": seed_diffs, "wins": sum(x > 0 for x in seed_diffs) / len(seeds), "paired": paired}
            pairs.append(pair)
    return {"valid_metric": valid_metric, "n_boot": n_boot, "configs": configs, "pairs": pairs}


def verdict(p):
    if p["low"] > 0:
        return "A better"
    if p["high"] < 0:
        return "B better"
    return "within noise"


def markdown(rep):
    f4 = lambda x: "nan" if x is None or not math.isfinite(x) else f"{x:.4f}"
    ci = lambda c: f"**{f4(c['mean'])}** [{f4(c['low'])}, {f4(c['high'])}]"
    valid_key = "valid " + rep["valid_metric"].lower()
    lines = [f"Mean over seeds [95% t interval]; per seed in seed order. Valid: best epoch's {rep['valid_metric']}.", "",
             "| configuration | seeds | test NDCG@10 | per seed | test Hit@10 | test MRR@10 | " + valid_key + " | best epoch | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, c in rep["configs"].items():
        if not c["seeds"]:
            lines.append(f"| {n} | 0 | failed | | | | | | |")
            continue
        lines.append(f"| {n} | {len(c['seeds'])} | {ci(c['test ndcg@10'])} | {' / '.join(map(f4, c['test ndcg@10']['per_seed']))} | "
                     f"{ci(c['test hit@10'])} | {ci(c['test mrr@10'])} | {ci(c[valid_key])} | "
                     f"{np.mean(c['best_epoch']):.1f} | {np.mean(c['seconds']):.0f} |")
    if rep["pairs"]:
        lines += ["", f"Paired differences A - B: mean over seeds; 95% interval from a paired bootstrap over test users "
                  f"({rep['n_boot']} resamples, each user's difference averaged over seeds; unpaired: A and B were evaluated on "
                  f"other users, each side resampled apart); 95% t interval over the "
                  f"per-seed differences; wins: the share of seeds in which A is higher.", "",
                  "| A - B | metric | difference | bootstrap 95% | t 95% (seeds) | wins | verdict |", "|---|---|---|---|---|---|---|"]
        for p in rep["pairs"]:
            for m in ("ndcg@10", "hit@10", valid_key):
                q = p[m]
                lines.append(f"| {p['a']} - {p['b']} | {m if m == valid_key else 'test ' + m} | {q['mean']:+.4f} | [{q['low']:+.4f}, {q['high']:+.4f}]{'' if q['paired'] else ' unpaired'} | "
                             f"[{q['t_low']:+.4f}, {q['t_high']:+.4f}] | {q['wins']:.0%} | {verdict(q)} |")
    failed = [f"- {n} seed {s}: {e}" for n, c in rep["configs"].items() for s, e in c["failed"].items()]
    if failed:
        lines += ["", "Failed runs:"] + failed
    return "\n".join(lines)


def figure(rep, path):
    """report.png: valid metric per epoch (mean over the seeds still running, band: +-1 sd) and test NDCG@10 with
    its 95% interval, per configuration. Skipped (one line) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "report.png skipped: matplotlib is not installed (pip install matplotlib)"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [n for n, c in rep["configs"].items() if c["seeds"]]
    for n in names:
        curves = rep["configs"][n]["valid_curve"]
        L = max(map(len, curves))
        mean = np.array([np.mean([c[e] for c in curves if e < len(c)]) for e in range(L)])
        sd = np.array([np.std([c[e] for c in curves if e < len(c)]) for e in range(L)])
        line, = ax1.plot(range(L), mean, label=n)
        ax1.fill_between(range(L), mean - sd, mean + sd, alpha=0.2, color=line.get_color())
    ax1.set(xlabel="epoch", ylabel=f"valid {rep['valid_metric']}", title="valid per epoch (mean over seeds, band +-1 sd)")
    ax1.legend()
    for i, n in enumerate(names):
        c = rep["configs"][n]["test ndcg@10"]
        low, high = (c["low"], c["high"]) if math.isfinite(c["low"]) else (c["mean"], c["mean"])
        ax2.errorbar([i], [c["mean"]], yerr=[[c["mean"] - low], [high - c["mean"]]], fmt="o", capsize=6)
        ax2.scatter([i] * len(c["per_seed"]), c["per_seed"], marker="x", color="gray", zorder=3)
    ax2.set_xticks(range(len(names)), names)
    ax2.set(ylabel="test NDCG@10", title="test NDCG@10: mean, 95% t interval, seeds (x)")
    fig.tight_layout()
    with data.replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return None


def compare(argv):
    args, shared, configs = parse_command(argv)
    out_dir = args.out_dir or os.path.join("runs", "compare-" + "-".join(configs))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"compare.py: error: --out_dir {out_dir}: {e.strerror or e}") from None
    runs = plan(args, shared, configs, out_dir)
    for name in configs:  # a configuration with a bad option: one line, the others go on
        bad = [r for r in runs if r["name"] == name and r["error"]]
        if bad:
            print(f"compare: {name}: {bad[0]['error']} (its {len(bad)} runs are skipped)", file=sys.stderr)
    log = lambda m: print(m, file=sys.stderr if args.json else sys.stdout, flush=True)
    with run_lock.locked(out_dir, "comparison", error=UsageError, prefix="compare.py: error: "):
        if args.no_run:
            for run in runs:
                run["results"] = finished(run) if run["error"] is None else None
                if run["error"] is None and run["results"] is None:
                    run["error"] = "not run yet"
            seconds = 0.0
        else:
            try:
                seconds = execute(runs, args.jobs or min(cores(), len(runs)), log)
            except KeyboardInterrupt:
                kept = sum(1 for r in runs if r.get("results"))
                print(f"\ninterrupted: {kept} finished runs are kept in {out_dir}; run the same command again to "
                      f"continue", file=sys.stderr)
                return 130
        valid_metric = next((r["cfg"]["valid_metric"] for r in runs if r["cfg"]), "MRR@10")
        rep = report(runs, valid_metric, args.n_boot)
        rep["seconds"], rep["command"] = seconds, "python train.py compare " + " ".join(argv)
        text = markdown(rep)
        train.save(rep, os.path.join(out_dir, "report.json"))
        with data.replacing(os.path.join(out_dir, "report.md")) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"`{rep['command']}`\n\n{text}\n")
        skipped = figure(rep, os.path.join(out_dir, "report.png"))
    print(json.dumps(rep, indent=1) if args.json else text)
    log(f"compare: {out_dir}/report.md, report.json" + (f"; {skipped}" if skipped else ", report.png")
        + f" ({seconds:.0f}s of runs this time)")
    return 1 if all(not c["seeds"] for c in rep["configs"].values()) else 0


def main(argv=None):
    return cli(compare, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
