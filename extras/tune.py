"""Hyper-parameter search over RecBole's hyper.test format.

    python train.py tune --params_file extras/hyper.test [--algo grid|random] [--max_evals N] [--out_dir DIR] [training options]
    python -m extras.tune ...                 (the same)

Each trial is a normal training run (train.run: early stopping on the valid metric, test of
the best checkpoint) in <out_dir>/trial-NNN/. Selection reads only the valid metric. A
finished trial is kept (its results.json); the same command again skips it.
"""
import ast
import itertools
import json
import math
import os
import random
import sys

import train
from extras import run_lock
from options import DEFAULTS, Parser, UsageError, cli, given_options, positive
from train import parse_args

SEARCH_KINDS = ("choice", "uniform", "loguniform", "quniform")
NOT_TUNABLE = ("dataset", "data_path", "out_dir", "eval_only")


def _cli_value(v):
    """A hyper.test value as train.py's command line spells it."""
    return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)


def read_params_file(path, fixed_argv=()):
    """RecBole's hyper.test: one parameter per line, `name kind values`.

        learning_rate choice [0.01, 0.001]   values are Python literals (numbers, True, 'CE', lists)
        dropout_prob uniform 0.0 0.5          a float in [a, b]
        learning_rate loguniform -9.2 -4.6    exp of a uniform in [a, b]: bounds are natural logs
        hidden_size quniform 64 256 64        round(uniform(a, b) / q) * q
    Bounds may be separated by spaces or commas (RecBole writes `0.0,0.5`). Blank lines and
    lines starting with # are skipped. Returns [(name, kind, values)]; every value is checked
    with train.py's own option parser, so a bad one fails here, before any training.
    """
    space, seen = [], {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: byte {e.start} is not UTF-8") from None
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}: line {no}"
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise UsageError(f"{where}: expected `name kind values` (e.g. learning_rate choice [0.01,0.001]), got {line.strip()!r}")
        name, kind, rest = parts
        if name not in DEFAULTS or name in NOT_TUNABLE:
            raise UsageError(f"{where}: unknown parameter {name!r} (tunable: train.py's options, e.g. learning_rate, dropout_prob)")
        if name in seen:
            raise UsageError(f"{where}: {name} is already searched on line {seen[name]}")
        if name in given_options(fixed_argv):
            raise UsageError(f"{where}: {name} is searched here and also fixed on the command line")
        if kind not in SEARCH_KINDS:
            raise UsageError(f"{where}: unknown search kind {kind!r} (expected one of {', '.join(SEARCH_KINDS)})")
        if kind == "choice":
            try:
                values = ast.literal_eval(rest.strip())
            except (ValueError, SyntaxError):
                raise UsageError(f"{where}: {name} choice: {rest.strip()!r} is not a Python list literal") from None
            if not isinstance(values, list) or not values:
                raise UsageError(f"{where}: {name} choice: expected a non-empty list such as [1, 2], got {rest.strip()!r}")
            checked = values
        else:
            try:
                bounds = [float(x) for x in rest.replace(",", " ").split()]
            except ValueError:
                raise UsageError(f"{where}: {name} {kind}: bounds must be numbers, got {rest.strip()!r}") from None
            want = 3 if kind == "quniform" else 2
            if len(bounds) != want or not bounds[0] <= bounds[1] or (kind == "quniform" and not bounds[2] > 0):
                form = "low high q (q > 0)" if kind == "quniform" else "low high"
                raise UsageError(f"{where}: {name} {kind}: expected {form} with low <= high, got {rest.strip()!r}")
            values = bounds
            checked = [math.exp(b) for b in bounds] if kind == "loguniform" else [_quantize(b, bounds) for b in bounds[:2]] if kind == "quniform" else bounds
        for v in checked:  # the same parser as a normal run: same types, same limits
            try:
                parse_args(list(fixed_argv) + ["--" + name, _cli_value(v)])
            except UsageError as e:
                raise UsageError(f"{where}: {name} = {v!r}: {str(e).split('error: ', 1)[-1]}") from None
        seen[name] = no
        space.append((name, kind, values))
    if not space:
        raise UsageError(f"{path}: no parameters to search")
    return space


def _quantize(x, bounds):
    q = bounds[2]
    v = round(x / q) * q
    return int(v) if all(float(b).is_integer() for b in bounds) else v  # 64 256 64 -> ints, for int options


def _line_size(kind, v):
    """Distinct values of one line: a choice's values, quniform's steps; None for an interval."""
    if kind in ("uniform", "loguniform"):
        return None
    return len(v) if kind == "choice" else round(v[1] / v[2]) - round(v[0] / v[2]) + 1


def space_size(space):
    """How many distinct settings the space has, or None when a line draws from an interval."""
    sizes = [_line_size(kind, v) for _, kind, v in space]
    return None if None in sizes else math.prod(sizes)


def _setting(space, index):
    """The index-th setting of a finite space, in grid order (the last line varying fastest)."""
    s = {}
    for name, kind, v in reversed(space):
        index, k = divmod(index, _line_size(kind, v))
        s[name] = v[k] if kind == "choice" else _quantize((round(v[0] / v[2]) + k) * v[2], v)
    return {name: s[name] for name, _, _ in space}


def grid_settings(space, max_evals=None):
    """(count, settings): every combination of the `choice` values, in file order, the last
    line varying fastest, made one at a time (a grid of 10^9 is never held in memory)."""
    for name, kind, _ in space:
        if kind != "choice":
            raise UsageError(f"--algo grid: {name} is searched with {kind}; grid search needs choice lines (use --algo random)")
    n = min(space_size(space), max_evals or space_size(space))
    return n, (dict(zip([s[0] for s in space], vals)) for vals in itertools.islice(itertools.product(*[s[2] for s in space]), n))


def random_settings(space, max_evals, seed):
    """max_evals distinct settings drawn with a fixed seed; all of them, in a random order, if
    the space has fewer. A finite space is drawn without replacement (random.sample of setting
    numbers: no rejection loop); an interval line makes repeats practically impossible."""
    rng = random.Random(seed)
    size = space_size(space)
    if size is not None:
        return [_setting(space, i) for i in rng.sample(range(size), min(max_evals, size))]
    out = []
    for _ in range(max_evals):
        s = {}
        for name, kind, v in space:
            if kind == "choice":
                s[name] = rng.choice(v)
            elif kind == "uniform":
                s[name] = rng.uniform(v[0], v[1])
            elif kind == "loguniform":
                s[name] = math.exp(rng.uniform(v[0], v[1]))
            else:
                s[name] = _quantize(rng.uniform(v[0], v[1]), v)
        out.append(s)
    return out


def best_trial(trials, valid_key):
    """The trial with the highest best-valid metric (the earlier one on a tie), None if every
    trial failed. Reads only trial["valid"]: selection never looks at test metrics."""
    done = [(i, t) for i, t in enumerate(trials) if "failed" not in t]
    return max(done, key=lambda it: (it[1]["valid"][valid_key], -it[0]))[1] if done else None


def _params_str(params):
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def tune(argv):
    """python train.py tune --params_file hyper.test [--algo grid|random] [--max_evals N]
    [--out_dir DIR] [any training option, fixed for every trial]."""
    if train.launched():
        raise UsageError("tune.py: error: tune runs in one process; start it with python, not torchrun")
    ap = Parser(prog="tune.py", description="Hyper-parameter search; every other option is a fixed training setting.",
                allow_abbrev=False)  # an abbreviation must not swallow a training option
    ap.add_argument("--params_file", required=True, help="RecBole's hyper.test format")
    ap.add_argument("--algo", default="grid", choices=["grid", "random"])
    ap.add_argument("--max_evals", type=positive(int), default=None, help="number of trials (random: default 10; grid: all)")
    ap.add_argument("--out_dir", default=None, help="default runs/tune-<dataset>-<kg>-<params file>")
    args, fixed_argv = ap.parse_known_args(argv)
    if not os.path.isfile(args.params_file):
        raise UsageError(f"tune.py: error: --params_file: {args.params_file}: file not found")
    base = vars(parse_args(fixed_argv))  # fixed settings, checked before the file
    if base["eval_only"]:
        raise UsageError("tune.py: error: --eval_only: tune trains; re-evaluate a trial with train.py --eval_only")
    space = read_params_file(args.params_file, fixed_argv)
    size, wanted = space_size(space), args.max_evals or (10 if args.algo == "random" else None)
    if args.algo == "grid":
        n_trials, settings = grid_settings(space, args.max_evals)
    else:
        settings = random_settings(space, wanted, base["seed"])
        n_trials = len(settings)
    if wanted and size is not None and wanted > size:
        print(f"tune: {wanted} trials asked (--max_evals), but the space has only {size} settings; running all {size}")
    stem = os.path.splitext(os.path.basename(args.params_file))[0]
    out_dir = args.out_dir or os.path.join("runs", f"tune-{base['dataset']}-{base['kg']}-{stem}")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"tune.py: error: --out_dir {out_dir}: {e.strerror or e}") from None
    with run_lock.locked(out_dir, "search", error=UsageError, prefix="tune.py: error: "):  # held for the whole search
        return search(space, settings, n_trials, fixed_argv, out_dir, base, args)


def search(space, settings, n_trials, fixed_argv, out_dir, base, args):
    """Run the trials one by one (resuming finished ones), then print the table and the best."""
    valid_key = base["valid_metric"].lower()
    head = {"params_file": args.params_file, "algo": args.algo, "seed": base["seed"], "valid_metric": base["valid_metric"],
            "fixed": fixed_argv, "space": [list(s) for s in space]}
    print(f"tune: {n_trials} trials ({args.algo}) over {', '.join(s[0] for s in space)}; selecting on valid "
          f"{base['valid_metric']}; results in {out_dir}/tune.json")
    trials = []
    try:
        for i, params in enumerate(settings):
            cfg = vars(parse_args(fixed_argv + [a for k, v in params.items() for a in ("--" + k, _cli_value(v))]))
            cfg["out_dir"], cfg["overwrite"] = os.path.join(out_dir, f"trial-{i:03d}"), True  # ours: the lock says so
            res_path = os.path.join(cfg["out_dir"], "results.json")
            res, resumed = None, False
            if os.path.exists(res_path):  # finished in an earlier invocation: keep it
                try:
                    with open(res_path) as f:
                        res = json.load(f)
                    saved = {k: v for k, v in res["config"].items() if k in cfg and k != "config_sources"}
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    raise UsageError(f"tune.py: error: {res_path}: not a trial's results ({type(e).__name__}); "
                                     f"remove it to run that trial again") from None
                if saved != {k: v for k, v in cfg.items() if k != "config_sources"}:  # where a value came from: not a setting
                    raise UsageError(f"tune.py: error: {cfg['out_dir']} holds a trial with other settings; "
                                     f"use a new --out_dir for a different search")
                resumed = True
            else:
                print(f"trial {i + 1}/{n_trials}: {_params_str(params)} ...", flush=True)
                os.makedirs(cfg["out_dir"], exist_ok=True)
                with open(os.path.join(cfg["out_dir"], "train.log"), "w") as logf:
                    try:
                        res = train.run(cfg, log=lambda m: print(m, file=logf, flush=True))
                    except train.NonFiniteError as e:  # a diverged trial: recorded as failed, never selected
                        res = {"config": cfg, "failed": str(e)}
                        train.save(res, res_path)
            done = f"trial {i + 1}/{n_trials}{' (finished earlier)' if resumed else ''}: {_params_str(params)}  "
            if "failed" in res:
                trials.append({"trial": i, "params": params, "failed": res["failed"], "run_dir": cfg["out_dir"]})
                print(done + f"FAILED: {res['failed']}", flush=True)
            else:
                trials.append({"trial": i, "params": params, "valid": res["best_valid"], "test": res["test"],
                               "best_epoch": res["best_epoch"], "epochs": len(res["valid"]),
                               "seconds": res["total_seconds"], "run_dir": cfg["out_dir"]})
                print(done + f"valid {valid_key} {res['best_valid'][valid_key]:.4f}  test ndcg@10 "
                      f"{res['test'].get('ndcg@10', float('nan')):.4f}  epochs {len(res['valid'])} (best {res['best_epoch']})  "
                      f"{res['total_seconds']:.0f}s", flush=True)
            train.save(dict(head, trials=trials, best=best_trial(trials, valid_key)), os.path.join(out_dir, "tune.json"))
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(trials)} finished trials are kept in {out_dir}/tune.json; "
              f"run the same command again to continue", file=sys.stderr)
        return 130
    print(tune_table(trials, valid_key))
    best = best_trial(trials, valid_key)
    if best is None:
        print(f"every trial failed; nothing to select (see {out_dir}/tune.json)", file=sys.stderr)
        return 1
    print(f"best (on valid {base['valid_metric']}): trial {best['trial'] + 1} ({best['run_dir']}): {_params_str(best['params'])}  "
          f"valid {best['valid'][valid_key]:.4f}  test ndcg@10 {best['test'].get('ndcg@10', float('nan')):.4f}")
    return 0


def tune_table(trials, valid_key):
    """All trials, best valid metric first, failed ones last."""
    names = list(trials[0]["params"]) if trials else []
    cols = ["trial"] + names + [f"valid {valid_key}", "test ndcg@10", "test hit@10", "epochs", "seconds"]
    rows = []
    for t in sorted(trials, key=lambda t: -t["valid"][valid_key] if "failed" not in t else float("inf")):
        rows.append([str(t["trial"] + 1)] + [f"{t['params'][n]:.4g}" if isinstance(t["params"][n], float) else str(t["params"][n]) for n in names]
                    + (["failed", "", "", "", ""] if "failed" in t else
                       [f"{t['valid'][valid_key]:.4f}", f"{t['test'].get('ndcg@10', float('nan')):.4f}",
                        f"{t['test'].get('hit@10', float('nan')):.4f}", str(t["epochs"]), f"{t['seconds']:.0f}"]))
    w = [max(len(c), *(len(r[j]) for r in rows)) if rows else len(c) for j, c in enumerate(cols)]
    return "\n".join("  ".join(x.rjust(w[j]) for j, x in enumerate(r)) for r in [cols] + rows)


def main(argv=None):
    return cli(tune, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
