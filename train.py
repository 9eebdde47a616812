"""Train and evaluate KSR with RecBole's protocol.

    python train.py --dataset ml-100k                      # train, early-stop on valid MRR@10, test
    python train.py --dataset ml-100k --kg attributes      # the correct attribute KG
    python train.py --dataset ml-100k --no_memory          # plain GRU4Rec baseline
    python train.py --dataset ml-100k --train_mode prefix  # train on RecBole's prefix samples
    python train.py --eval_only runs/X/model.pt            # re-evaluate a saved model
    python train.py explain --run runs/X --user 196        # which KG relations drive a user's top items
    python train.py tune --params_file hyper.test          # hyper-parameter search, RecBole's hyper.test format

Protocol (RecBole's sequential full ranking): leave-one-out by time; every item is scored
for each valid/test sequence, only the padding item is excluded; early stopping on valid
MRR@10; test metrics from the best valid checkpoint. Training: --train_mode sequence (the
default) predicts the next item at every step of windows of a user's training items;
--train_mode prefix makes every prefix a sample, as RecBole does. Both see the same targets.
"""
import argparse
import ast
import ctypes
import itertools
import json
import math
import os
import pickle
import platform
import random
import sys
import time

import numpy as np
import torch

import data
from ksr import KSR, sample_negatives

# -----------------------------------------------------------------------------
# defaults: RecBole's names and values (KSR.yaml, overall.yaml)
DEFAULTS = dict(
    dataset="ml-100k", data_path="dataset", kg="freebase", keep_unlinked=False,
    embedding_size=64, kg_embedding_size=64, hidden_size=128, num_layers=1, dropout_prob=0.1,
    gamma=10.0, loss_type="CE", freeze_kg=True, no_memory=False,
    learning_rate=0.001, train_batch_size=2048, eval_batch_size=4096, epochs=300, stopping_step=10,
    MAX_ITEM_LIST_LENGTH=50, topk=[10], valid_metric="MRR@10", seed=2020, device="cpu",
    memory_backend="torch", max_steps=0, out_dir=None, eval_only=None,
    train_mode="sequence", window_stride=None, pad_slot=False,
)
# --train_mode sequence: a batch counts windows (~2,000 per epoch on ml-100k), not prefixes
SEQUENCE_DEFAULTS = dict(train_batch_size=16, learning_rate=0.001)  # chosen on valid MRR@10 (README)
METRICS = ("recall", "mrr", "ndcg", "hit", "precision")
# -----------------------------------------------------------------------------


def str2bool(v):
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def positive(cast):
    def parse(v):
        x = cast(v)
        if not x > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {v!r}")
        return x
    parse.__name__ = cast.__name__  # argparse names it in errors: "invalid int value"
    return parse


def topk_list(v):
    try:
        ks = [int(k) for k in v.strip("[]").split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list of positive integers such as [10] or 5,10,20, got {v!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {v!r}")
    return ks


class UsageError(Exception):
    """A bad option or value: main() prints it on one line and exits 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (main() catches it)
        raise UsageError(f"{self.prog}: error: {message}")


def parse_args(argv=None):
    d = DEFAULTS
    ap = Parser(prog="train.py", description="Train KSR (RecBole's protocol) and report test metrics.",
                epilog="More commands: `train.py tune --params_file hyper.test ...` (hyper-parameter search) and "
                       "`train.py explain --run RUN_DIR --user TOKEN | --summary` (see --help of each).")
    ap.add_argument("--dataset", default=d["dataset"])
    ap.add_argument("--data_path", default=d["data_path"])
    ap.add_argument("--kg", default=d["kg"], choices=["freebase", "native", "attributes"])
    ap.add_argument("--keep_unlinked", type=str2bool, default=d["keep_unlinked"])
    ap.add_argument("--embedding_size", type=positive(int), default=d["embedding_size"])
    ap.add_argument("--kg_embedding_size", type=positive(int), default=d["kg_embedding_size"])
    ap.add_argument("--hidden_size", type=positive(int), default=d["hidden_size"])
    ap.add_argument("--num_layers", type=positive(int), default=d["num_layers"])
    ap.add_argument("--dropout_prob", type=float, default=d["dropout_prob"])
    ap.add_argument("--gamma", type=float, default=d["gamma"])
    ap.add_argument("--loss_type", default=d["loss_type"], choices=["CE", "BPR"])
    ap.add_argument("--freeze_kg", type=str2bool, default=d["freeze_kg"])
    ap.add_argument("--pad_slot", type=str2bool, default=d["pad_slot"],
                    help="one more memory slot with a zero key, as RecBole's padding relation gives")
    ap.add_argument("--no_memory", action="store_true", help="plain GRU4Rec: no knowledge memory")
    ap.add_argument("--learning_rate", type=positive(float), default=None,
                    help=f"default {d['learning_rate']} (sequence mode: {SEQUENCE_DEFAULTS['learning_rate']})")
    ap.add_argument("--train_batch_size", type=positive(int), default=None,
                    help=f"default {d['train_batch_size']} prefixes (sequence mode: {SEQUENCE_DEFAULTS['train_batch_size']} windows)")
    ap.add_argument("--train_mode", default=d["train_mode"], choices=["prefix", "sequence"],
                    help="prefix: RecBole's samples, one per prefix; sequence: whole windows, a target at every step")
    ap.add_argument("--window_stride", type=positive(int), default=None,
                    help="sequence mode: start a window every this many steps (default MAX_ITEM_LIST_LENGTH: no overlap)")
    ap.add_argument("--eval_batch_size", type=positive(int), default=d["eval_batch_size"])
    ap.add_argument("--epochs", type=positive(int), default=d["epochs"])
    ap.add_argument("--stopping_step", type=positive(int), default=d["stopping_step"])
    ap.add_argument("--MAX_ITEM_LIST_LENGTH", type=positive(int), default=d["MAX_ITEM_LIST_LENGTH"])
    ap.add_argument("--topk", type=topk_list, default=d["topk"])
    ap.add_argument("--valid_metric", default=d["valid_metric"])
    ap.add_argument("--seed", type=int, default=d["seed"])
    ap.add_argument("--device", default=d["device"], choices=["cpu", "cuda"])
    ap.add_argument("--memory_backend", default=d["memory_backend"], choices=["torch", "triton"],
                    help="triton: the fused kernel in kernels/ (a CUDA GPU, or the CPU under TRITON_INTERPRET=1)")
    ap.add_argument("--max_steps", type=int, default=d["max_steps"], help="stop each epoch after this many batches (0: all)")
    ap.add_argument("--out_dir", default=d["out_dir"], help="run folder (default runs/<dataset>-<kg>-<time>)")
    ap.add_argument("--eval_only", default=d["eval_only"], metavar="CHECKPOINT", help="re-evaluate a saved model.pt")
    args = ap.parse_args(argv)
    mode_defaults = SEQUENCE_DEFAULTS if args.train_mode == "sequence" else d
    for key in ("learning_rate", "train_batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, mode_defaults[key])
    if args.window_stride and args.window_stride > args.MAX_ITEM_LIST_LENGTH:
        ap.error(f"--window_stride: must be at most MAX_ITEM_LIST_LENGTH ({args.MAX_ITEM_LIST_LENGTH}), got {args.window_stride}")
    name, _, k = args.valid_metric.partition("@")
    if name.lower() not in METRICS or not k.isdigit() or int(k) not in args.topk:
        ap.error(f"--valid_metric: {args.valid_metric!r} is not one of {METRICS} at a k in --topk {args.topk} (e.g. MRR@10)")
    if not 0 <= args.dropout_prob < 1:
        ap.error(f"--dropout_prob: must be in [0, 1), got {args.dropout_prob}")
    if args.memory_backend == "triton":
        import kernels
        if kernels.available():
            ap.error(f"--memory_backend triton: {kernels.available()}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available on this machine")
    return args


def keep_freed_memory():
    """Ask glibc to keep freed memory instead of handing large blocks back to the OS.

    Each batch allocates a few hundred MB of activations; by default glibc maps every
    large block afresh and the first touch of each page costs a page fault, about a
    fifth of a training step on 2 cores. Linux/glibc only; elsewhere it does nothing.
    """
    if platform.system() != "Linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)          # M_MMAP_MAX: serve large blocks from the heap
        libc.mallopt(-1, 2 ** 30)    # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
    except (OSError, AttributeError):
        pass


# -----------------------------------------------------------------------------
# evaluation: full ranking

def rank_of_target(scores, targets):
    """1-based rank of each target among all items. Ties: an item with the same score
    ranks ahead of the target if its id is smaller (as a stable sort by score would)."""
    s = scores.gather(1, targets[:, None])  # (B, 1)
    higher = (scores > s).sum(1)
    ids = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = ((scores == s) & (ids < targets[:, None])).sum(1)
    return 1 + higher + tied_before


def metrics_from_ranks(ranks, topk):
    """Recall, MRR, NDCG, Hit, Precision @k for one ground-truth item per user, as RecBole."""
    ranks = ranks.double()
    out = {}
    for k in topk:
        hit = (ranks <= k).double()
        out[f"recall@{k}"] = hit.mean().item()
        out[f"mrr@{k}"] = (hit / ranks).mean().item()
        out[f"ndcg@{k}"] = (hit / torch.log2(ranks + 1)).mean().item()
        out[f"hit@{k}"] = hit.mean().item()
        out[f"precision@{k}"] = (hit / k).mean().item()
    return out


def batches(split, size, device="cpu"):
    """(start, item_seq, lengths, targets) of consecutive slices of `split`, in order."""
    for i in range(0, len(split), size):
        yield (i,) + tuple(torch.as_tensor(a[i:i + size], device=device) for a in (split.item_seq, split.lengths, split.targets))


@torch.no_grad()
def evaluate(model, split, cfg, device):
    model.eval()
    ranks = []
    for _, seq, lengths, targets in batches(split, cfg["eval_batch_size"], device):
        scores = model.full_scores(model(seq, lengths))
        ranks.append(rank_of_target(scores, targets))
    return metrics_from_ranks(torch.cat(ranks).cpu(), cfg["topk"])


# -----------------------------------------------------------------------------
# training

def build_model(cfg, ds):
    return KSR(ds.n_items, ds.item_kg, ds.relation_kg, embedding_size=cfg["embedding_size"],
               hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"], dropout_prob=cfg["dropout_prob"],
               gamma=cfg["gamma"], loss_type=cfg["loss_type"], freeze_kg=cfg["freeze_kg"], no_memory=cfg["no_memory"],
               memory_backend=cfg["memory_backend"], pad_slot=cfg["pad_slot"])


MEMORY_CACHE_BYTES = 2 * 2 ** 30


@torch.no_grad()
def memory_cache(model, split, cfg, device, log):
    """With a frozen KG the memory V of a training sample depends on no trained weight:
    write it once for every sample instead of once per sample per epoch. None when the
    model has no frozen memory or the cache would exceed MEMORY_CACHE_BYTES."""
    if not model.frozen_kg or model.fused_memory is not None:
        return None
    R, K = model.relations.shape
    all_steps = split.targets.ndim == 2  # sequence-mode windows: the memory after every step
    size = len(split) * R * K * 4 * (split.item_seq.shape[1] if all_steps else 1)
    if size > MEMORY_CACHE_BYTES:
        log(f"memory cache: {size / 2 ** 30:.1f} GiB is over the {MEMORY_CACHE_BYTES / 2 ** 30:.0f} GiB budget; writing the memory every batch")
        return None
    t0 = time.time()
    V = torch.empty((len(split),) + ((split.item_seq.shape[1],) if all_steps else ()) + (R, K), device=device)
    for i, seq, lengths, _ in batches(split, 1024, device):
        V[i:i + len(seq)] = model.write_memory(seq, lengths, all_steps)
    log(f"memory cache: wrote the memory of {len(split)} training samples once ({size / 2 ** 20:.0f} MiB, {time.time() - t0:.1f}s)")
    return V


def train_epoch(model, opt, split, cfg, device, gen, progress, V_cache=None):
    model.train()
    n = len(split)
    order = torch.randperm(n, generator=gen)
    n_batches = math.ceil(n / cfg["train_batch_size"])
    if cfg["max_steps"]:
        n_batches = min(n_batches, cfg["max_steps"])
    total, count = 0.0, 0
    for b in range(n_batches):
        idx = order[b * cfg["train_batch_size"]:(b + 1) * cfg["train_batch_size"]].numpy()
        seq = torch.as_tensor(split.item_seq[idx], device=device)
        lengths = torch.as_tensor(split.lengths[idx], device=device)
        targets = torch.as_tensor(split.targets[idx], device=device)
        negatives = sample_negatives(targets.cpu(), model.n_items, gen).to(device) if cfg["loss_type"] == "BPR" else None
        V = V_cache[torch.as_tensor(idx, device=device)] if V_cache is not None else None
        loss = model.loss(model(seq, lengths, V, all_steps=targets.dim() == 2), targets, negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        weight = int((targets > 0).sum())  # prefixes, or the steps with a target in sequence mode
        total += loss.item() * weight
        count += weight
        progress(b + 1, n_batches, total / count)
    return total / count


def save_atomic(obj, path):
    """results.json or a checkpoint, written to a temporary file and renamed into place."""
    with data.replaced_atomically(path) as tmp:
        if path.endswith(".json"):
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1)
        else:
            torch.save(obj, tmp)


def fmt_metrics(m, keys=None):
    return "  ".join(f"{k} {v:.4f}" for k, v in m.items() if keys is None or k in keys)


def make_progress(enabled):
    def progress(i, n, loss):
        if enabled:
            print(f"\r  batch {i}/{n}  loss {loss:.4f}", end="" if i < n else "\r" + " " * 40 + "\r", file=sys.stderr, flush=True)
    return progress


def load_data(cfg, log):
    return data.load_dataset(cfg["dataset"], cfg["data_path"], cfg["kg"], cfg["keep_unlinked"],
                             cfg["kg_embedding_size"], cfg["MAX_ITEM_LIST_LENGTH"], log=log)


def run(cfg, log=print):
    """Train with early stopping, test the best checkpoint; returns the results dict."""
    t_start = time.time()
    keep_freed_memory()
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    device = torch.device(cfg["device"])
    ds = load_data(cfg, log)
    log(f"data: {ds.n_users} users, {ds.n_items} items, {len(ds.train)} train / {len(ds.valid)} valid / "
        f"{len(ds.test)} test samples, {len(ds.relation_tokens)} relations (kg={cfg['kg']})")
    out_dir = cfg["out_dir"] or os.path.join("runs", f"{cfg['dataset']}-{cfg['kg']}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "model.pt")

    model = build_model(cfg, ds).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg["learning_rate"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    train_split = ds.train
    if cfg["train_mode"] == "sequence":
        train_split = data.sequence_windows(ds.seqs, ds.train, cfg["MAX_ITEM_LIST_LENGTH"], cfg["window_stride"])
        log(f"sequence mode: {len(train_split)} windows of at most {cfg['MAX_ITEM_LIST_LENGTH']} steps, "
            f"{int((train_split.targets > 0).sum())} targets, stride {cfg['window_stride'] or cfg['MAX_ITEM_LIST_LENGTH']}")
    V_cache = memory_cache(model, train_split, cfg, device, log)
    valid_key = cfg["valid_metric"].lower()
    progress = make_progress(sys.stderr.isatty())
    epoch_seconds, valid_hist, losses = [], [], []
    best, best_epoch, bad = float("-inf"), -1, 0
    for epoch in range(cfg["epochs"]):
        t0 = time.time()
        loss = train_epoch(model, opt, train_split, cfg, device, gen, progress, V_cache)
        epoch_seconds.append(time.time() - t0)
        losses.append(loss)
        valid = evaluate(model, ds.valid, cfg, device)
        valid_hist.append(valid)
        improved = valid[valid_key] >= best  # RecBole's early_stopping: a tie also counts as better
        if improved:
            best, best_epoch, bad = valid[valid_key], epoch, 0
            save_atomic({"config": cfg, "fingerprint": ds.fingerprint, "stats": ds.stats, "epoch": epoch,
                         "model": model.state_dict()}, ckpt_path)
        else:
            bad += 1
        log(f"epoch {epoch:3d}  loss {loss:.4f}  train {epoch_seconds[-1]:.1f}s  valid {fmt_metrics(valid, (valid_key, 'ndcg@10', 'hit@10'))}"
            + ("  *" if improved else ""))
        if bad > cfg["stopping_step"]:  # RecBole stops after stopping_step + 1 epochs without improvement
            log(f"early stop: no better valid {cfg['valid_metric']} for {bad} epochs")
            break

    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    test = evaluate(model, ds.test, cfg, device)
    results = {
        "config": cfg, "dataset": ds.stats, "epoch_seconds": epoch_seconds, "train_loss": losses,
        "valid": valid_hist, "best_epoch": best_epoch, "best_valid": valid_hist[best_epoch],
        "test": test, "total_seconds": time.time() - t_start, "checkpoint": ckpt_path,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    save_atomic(results, os.path.join(out_dir, "results.json"))
    log(f"best valid {cfg['valid_metric']} {best:.4f} at epoch {best_epoch}; test metrics of that checkpoint:")
    log(metrics_table(test, cfg["topk"]))
    log(f"results: {os.path.join(out_dir, 'results.json')}  ({results['total_seconds']:.0f}s in all)")
    return results


def metrics_table(m, topk):
    lines = ["metric     " + "".join(f"{'@' + str(k):>10}" for k in topk)]
    for name in METRICS:
        lines.append(f"{name:<11}" + "".join(f"{m[f'{name}@{k}']:>10.4f}" for k in topk))
    return "\n".join(lines)


def load_checkpoint(path, cfg_overrides, log=print):
    """(cfg, ds, model) of a saved model.pt, refusing data that changed since it was trained."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        # options newer than the checkpoint: the value that matches how it was trained
        cfg = {**DEFAULTS, "train_mode": "prefix", "pad_slot": False, **ckpt["config"]}
    except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as e:
        raise data.DataError(f"{path}: not a checkpoint written by train.py ({type(e).__name__}: {e})".splitlines()[0]) from None
    cfg.update(cfg_overrides)
    ds = load_data(cfg, log)
    if ds.fingerprint != ckpt["fingerprint"]:
        raise data.DataError(f"{path}: the checkpoint was trained on data with fingerprint {ckpt['fingerprint']}, "
                             f"but {cfg['data_path']}/{cfg['dataset']} (kg={cfg['kg']}) now has {ds.fingerprint}")
    model = build_model(cfg, ds).to(cfg["device"])
    model.load_state_dict(ckpt["model"])
    return cfg, ds, model, ckpt["epoch"]


def eval_only(path, cfg_overrides, log=print):
    cfg, ds, model, epoch = load_checkpoint(path, cfg_overrides, log)
    out = {"valid": evaluate(model, ds.valid, cfg, cfg["device"]), "test": evaluate(model, ds.test, cfg, cfg["device"])}
    log(f"{path} (epoch {epoch}): test metrics")
    log(metrics_table(out["test"], cfg["topk"]))
    return out


# -----------------------------------------------------------------------------
# python train.py tune: hyper-parameter search over RecBole's hyper.test format

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
    with open(path) as f:
        lines = f.read().splitlines()
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
        if any(a == "--" + name or a.startswith(f"--{name}=") for a in fixed_argv):
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


def grid_settings(space, max_evals=None):
    """Every combination of the `choice` values, in file order, the last line varying fastest."""
    for name, kind, _ in space:
        if kind != "choice":
            raise UsageError(f"--algo grid: {name} is searched with {kind}; grid search needs choice lines (use --algo random)")
    combos = [dict(zip([s[0] for s in space], vals)) for vals in itertools.product(*[s[2] for s in space])]
    return combos[:max_evals] if max_evals else combos


def random_settings(space, max_evals, seed):
    """max_evals distinct settings drawn with a fixed seed (fewer if the space is smaller)."""
    rng = random.Random(seed)
    out, keys = [], set()
    for _ in range(100 * max_evals):
        if len(out) == max_evals:
            break
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
        key = repr(sorted(s.items()))
        if key not in keys:
            keys.add(key)
            out.append(s)
    return out


def best_trial(trials, valid_key):
    """The trial with the highest best-valid metric (the earlier one on a tie). Reads only
    trial["valid"]: selection never looks at test metrics."""
    return max(enumerate(trials), key=lambda it: (it[1]["valid"][valid_key], -it[0]))[1]


def _params_str(params):
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def tune(argv):
    """python train.py tune --params_file hyper.test [--algo grid|random] [--max_evals N]
    [--out_dir DIR] [any training option, fixed for every trial]."""
    ap = Parser(prog="train.py tune", description="Hyper-parameter search; every other option is a fixed training setting.",
                allow_abbrev=False)  # an abbreviation must not swallow a training option
    ap.add_argument("--params_file", required=True, help="RecBole's hyper.test format")
    ap.add_argument("--algo", default="grid", choices=["grid", "random"])
    ap.add_argument("--max_evals", type=positive(int), default=None, help="number of trials (random: default 10; grid: all)")
    ap.add_argument("--out_dir", default=None, help="default runs/tune-<dataset>-<kg>-<params file>")
    args, fixed_argv = ap.parse_known_args(argv)
    if not os.path.exists(args.params_file):
        raise UsageError(f"train.py tune: error: --params_file: {args.params_file}: file not found")
    base = vars(parse_args(fixed_argv))  # fixed settings, checked before the file
    if base["eval_only"]:
        raise UsageError("train.py tune: error: --eval_only: tune trains; re-evaluate a trial with train.py --eval_only")
    space = read_params_file(args.params_file, fixed_argv)
    if args.algo == "grid":
        settings = grid_settings(space, args.max_evals)
    else:
        settings = random_settings(space, args.max_evals or 10, base["seed"])
    stem = os.path.splitext(os.path.basename(args.params_file))[0]
    out_dir = args.out_dir or os.path.join("runs", f"tune-{base['dataset']}-{base['kg']}-{stem}")
    os.makedirs(out_dir, exist_ok=True)
    valid_key = base["valid_metric"].lower()
    head = {"params_file": args.params_file, "algo": args.algo, "seed": base["seed"], "valid_metric": base["valid_metric"],
            "fixed": fixed_argv, "space": [list(s) for s in space]}
    print(f"tune: {len(settings)} trials ({args.algo}) over {', '.join(s[0] for s in space)}; selecting on valid "
          f"{base['valid_metric']}; results in {out_dir}/tune.json")
    trials = []
    try:
        for i, params in enumerate(settings):
            cfg = vars(parse_args(fixed_argv + [a for k, v in params.items() for a in ("--" + k, _cli_value(v))]))
            cfg["out_dir"] = os.path.join(out_dir, f"trial-{i:03d}")
            res_path = os.path.join(cfg["out_dir"], "results.json")
            res, resumed = None, False
            if os.path.exists(res_path):  # finished in an earlier invocation: keep it
                with open(res_path) as f:
                    res = json.load(f)
                if {k: v for k, v in res["config"].items() if k in cfg} != cfg:
                    raise UsageError(f"train.py tune: error: {cfg['out_dir']} holds a trial with other settings; "
                                     f"use a new --out_dir for a different search")
                resumed = True
            else:
                print(f"trial {i + 1}/{len(settings)}: {_params_str(params)} ...", flush=True)
                os.makedirs(cfg["out_dir"], exist_ok=True)
                with open(os.path.join(cfg["out_dir"], "train.log"), "w") as logf:
                    res = run(cfg, log=lambda m: print(m, file=logf, flush=True))
            trials.append({"trial": i, "params": params, "valid": res["best_valid"], "test": res["test"],
                           "best_epoch": res["best_epoch"], "epochs": len(res["valid"]),
                           "seconds": res["total_seconds"], "run_dir": cfg["out_dir"]})
            save_atomic(dict(head, trials=trials, best=best_trial(trials, valid_key)), os.path.join(out_dir, "tune.json"))
            print(f"trial {i + 1}/{len(settings)}{' (finished earlier)' if resumed else ''}: {_params_str(params)}  "
                  f"valid {valid_key} {res['best_valid'][valid_key]:.4f}  test ndcg@10 {res['test'].get('ndcg@10', float('nan')):.4f}  "
                  f"epochs {len(res['valid'])} (best {res['best_epoch']})  {res['total_seconds']:.0f}s", flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(trials)} finished trials are kept in {out_dir}/tune.json; "
              f"run the same command again to continue", file=sys.stderr)
        return 130
    print(tune_table(trials, valid_key))
    best = best_trial(trials, valid_key)
    print(f"best (on valid {base['valid_metric']}): trial {best['trial'] + 1} ({best['run_dir']}): {_params_str(best['params'])}  "
          f"valid {best['valid'][valid_key]:.4f}  test ndcg@10 {best['test'].get('ndcg@10', float('nan')):.4f}")
    return 0


def tune_table(trials, valid_key):
    """All trials, best valid metric first."""
    names = list(trials[0]["params"]) if trials else []
    cols = ["trial"] + names + [f"valid {valid_key}", "test ndcg@10", "test hit@10", "epochs", "seconds"]
    rows = []
    for t in sorted(trials, key=lambda t: -t["valid"][valid_key]):
        rows.append([str(t["trial"] + 1)] + [f"{t['params'][n]:.4g}" if isinstance(t["params"][n], float) else str(t["params"][n]) for n in names]
                    + [f"{t['valid'][valid_key]:.4f}", f"{t['test'].get('ndcg@10', float('nan')):.4f}",
                       f"{t['test'].get('hit@10', float('nan')):.4f}", str(t["epochs"]), f"{t['seconds']:.0f}"])
    w = [max(len(c), *(len(r[j]) for r in rows)) if rows else len(c) for j, c in enumerate(cols)]
    return "\n".join("  ".join(x.rjust(w[j]) for j, x in enumerate(r)) for r in [cols] + rows)


# -----------------------------------------------------------------------------
# python train.py explain: which knowledge-graph relations drive a recommendation

def slot_names(model, ds):
    """One name per memory slot: the KG's relation names, after RecBole's zero-key slot."""
    return (["[PAD] (zero key)"] if model.relations.shape[0] > len(ds.relation_tokens) else []) + list(ds.relation_tokens)


def item_name(ds, i):
    return ds.item_titles[i] if ds.item_titles else f"item {ds.item_tokens[i]}"


@torch.no_grad()
def explain_user(model, ds, uid, topk):
    """Everything `explain --user` shows, for user id `uid`'s test sequence, as a dict."""
    rows = np.flatnonzero(ds.test.users == uid)
    if not len(rows):
        raise data.DataError(f"user {ds.user_tokens[uid]} has no test sample (fewer than 3 interactions); "
                             "explain needs one")
    split = ds.test
    seq = torch.as_tensor(split.item_seq[rows[:1]])
    lengths = torch.as_tensor(split.lengths[rows[:1]])
    model.eval()
    p_seq, p_rel, w, w_steps = model.explain(seq, lengths)
    q = model.item_representations()  # (N + 1, E)
    scores = model.full_scores(model(seq, lengths))[0]
    top = torch.topk(scores, topk).indices
    seq_term = (p_seq[0] @ q[top].T)  # (k,)
    rel_terms = (p_rel[0] @ q[top].T).T  # (k, R)
    target = int(split.targets[rows[0]])
    n = int(lengths[0])
    return {"user": ds.user_tokens[uid], "history": seq[0, :n].tolist(), "target": target,
            "target_rank": int(rank_of_target(scores[None], torch.tensor([target]))[0]),
            "attention": w[0].tolist(), "attention_steps": w_steps[0, :n].tolist(),
            "top": top.tolist(), "scores": scores[top].tolist(),
            "sequence_term": seq_term.tolist(), "relation_terms": rel_terms.tolist()}


@torch.no_grad()
def explain_summary(model, ds, cfg):
    """Over all test users: the mean read attention per memory slot, how often each slot is
    the top one, and how far each part of the score moves items apart: the spread (standard
    deviation over all items) of the sequence term and of the memory term, averaged over users.
    A term that is the same for every item changes no ranking, however large it is."""
    model.eval()
    ws, seq_spread, mem_spread = [], [], []
    q = model.item_representations()[1:]  # real items
    for _, seq, lengths, _ in batches(ds.test, cfg["eval_batch_size"]):
        p_seq, p_rel, w, _ = model.explain(seq, lengths)
        seq_spread.append((p_seq @ q.T).std(1))
        mem_spread.append((p_rel.sum(1) @ q.T).std(1))
        ws.append(w)
    w = torch.cat(ws)  # (users, R)
    top_share = torch.bincount(w.argmax(1), minlength=w.shape[1]).double() / len(w)
    return w.mean(0).tolist(), top_share.tolist(), torch.cat(seq_spread).mean().item(), torch.cat(mem_spread).mean().item()


def print_explanation(ex, ds, names, recent, shown):
    hist = ex["history"]
    print(f"user {ex['user']}: {len(hist)} items before the held-out test item; the last {min(recent, len(hist))} (oldest first):")
    for i in hist[-recent:]:
        print(f"    {item_name(ds, i)}")
    print(f"held-out next item: {item_name(ds, ex['target'])} (rank {ex['target_rank']} of {ds.n_items})")
    print("read attention over relations after the last item (w_a = softmax(gamma q . r_a)):")
    for a in sorted(range(len(names)), key=lambda a: -ex["attention"][a])[:shown]:
        print(f"  {ex['attention'][a]:7.3f}  {names[a]}")
    print(f"top-{len(ex['top'])} recommendations; score = sequence term + one term per relation "
          f"(w_a (W_m V_a) . q_i), largest relation terms shown:")
    for r, (i, s, st, terms) in enumerate(zip(ex["top"], ex["scores"], ex["sequence_term"], ex["relation_terms"]), 1):
        big = sorted(range(len(names)), key=lambda a: -abs(terms[a]))[:3]
        parts = ", ".join(f"{names[a]} {terms[a]:+.2f}" for a in big)
        mark = "  <- the held-out item" if i == ex["target"] else ""
        print(f"  {r:2d}. {item_name(ds, i)[:40]:40s} {s:7.2f} = {st:+.2f} + memory {sum(terms):+.2f} ({parts}){mark}")


def plot_explanation(ex, ds, names, path, recent):
    plt = _pyplot()
    steps = ex["attention_steps"][-recent:]
    labels = [item_name(ds, i)[:28] for i in ex["history"][-recent:]]
    terms = np.array(ex["relation_terms"])  # (k, R)
    keep = sorted(np.argsort(-np.abs(terms).sum(0))[:8])  # the slots with the largest terms
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.32 * max(len(steps), len(ex["top"])) + 2.5),
                                   gridspec_kw={"width_ratios": [len(names) + 2, len(keep) + 2]})
    im = ax1.imshow(np.array(steps), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    ax1.set_yticks(range(len(labels)), labels, fontsize=7)
    ax1.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax1.set_title(f"user {ex['user']}: read attention after each item", fontsize=9)
    fig.colorbar(im, ax=ax1, fraction=0.04)
    cols = terms[:, keep]
    lim = max(np.abs(cols).max(), 1e-6)
    im2 = ax2.imshow(cols, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)  # own scale: the sequence term is larger
    ax2.set_yticks(range(len(ex["top"])), [f"{item_name(ds, i)[:24]} (seq {s:+.1f})" for i, s in zip(ex["top"], ex["sequence_term"])],
                   fontsize=7)
    ax2.set_xticks(range(len(keep)), [names[a] for a in keep], rotation=70, ha="right", fontsize=7)
    ax2.set_title("per-relation score terms of the top items", fontsize=9)
    fig.colorbar(im2, ax=ax2, fraction=0.04)
    _save_figure(fig, path)


def plot_summary(names, mean_w, path, title):
    plt = _pyplot()
    order = np.argsort(mean_w)
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(names) + 1.5))
    ax.barh(range(len(names)), np.array(mean_w)[order])
    ax.set_yticks(range(len(names)), [names[a] for a in order], fontsize=7)
    ax.set_xlabel("mean read attention over test users")
    ax.set_title(title, fontsize=9)
    _save_figure(fig, path)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("train.py explain: error: --plot needs matplotlib, an optional dependency: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path):
    fig.tight_layout()
    with data.replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    _pyplot().close(fig)
    print(f"wrote {path}")


def explain(argv):
    """python train.py explain --run RUN_DIR (--user TOKEN [--topk K] | --summary) [--plot FILE.png]"""
    ap = Parser(prog="train.py explain", description="Explain a trained run's recommendations with its knowledge memory.")
    ap.add_argument("--run", required=True, help="a training run's folder (its --out_dir)")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user token (the user_id column of the .inter file)")
    who.add_argument("--summary", action="store_true", help="mean read attention per relation over all test users")
    ap.add_argument("--topk", type=positive(int), default=10)
    ap.add_argument("--recent", type=positive(int), default=10, help="how many of the user's last items to show")
    ap.add_argument("--plot", metavar="FILE.png", help="also draw a PNG (needs matplotlib)")
    ap.add_argument("--data_path", default=None, help="where the dataset lives, if not where the run read it")
    args = ap.parse_args(argv)
    if args.plot:
        _pyplot()  # fail before the work if matplotlib is missing
    ckpt = os.path.join(args.run, "model.pt")
    if not os.path.exists(ckpt):
        raise UsageError(f"train.py explain: error: --run: {ckpt}: not found (give the --out_dir of a finished training run)")
    overrides = {"device": "cpu", "memory_backend": "torch"} | ({"data_path": args.data_path} if args.data_path else {})
    cfg, ds, model, _ = load_checkpoint(ckpt, overrides, log=lambda m: print(m, file=sys.stderr))  # data messages off stdout
    if cfg["no_memory"]:
        raise UsageError(f"train.py explain: error: {args.run} was trained with --no_memory: it has no knowledge memory to explain")
    names = slot_names(model, ds)
    print(f"run {args.run}: {cfg['dataset']}, kg={cfg['kg']}, {len(names)} memory slots, train_mode {cfg['train_mode']}")
    if args.summary:
        mean_w, top_share, seq_spread, mem_spread = explain_summary(model, ds, cfg)
        print(f"read attention over {len(ds.test)} test users (after each user's last item), by mean:")
        print(f"  {'mean w':>7}  {'top for':>8}  relation")
        for a in sorted(range(len(names)), key=lambda a: -mean_w[a]):
            print(f"  {mean_w[a]:7.3f}  {100 * top_share[a]:7.1f}%  {names[a]}")
        print(f"how far each part of the score moves items apart (std over all items, mean over users): "
              f"sequence term {seq_spread:.2f}, memory term {mem_spread:.2f}")
        if args.plot:
            plot_summary(names, mean_w, args.plot, f"{cfg['dataset']}, kg={cfg['kg']}: where the read looks")
        return 0
    if args.user not in ds.user_tokens[1:]:
        inter = os.path.join(cfg["data_path"], cfg["dataset"], cfg["dataset"] + ".inter")
        raise UsageError(f"train.py explain: error: --user {args.user!r}: no such user in {inter} (valid tokens are its "
                         f"user_id column, e.g. {', '.join(ds.user_tokens[1:4])}; --summary needs none)")
    ex = explain_user(model, ds, ds.user_tokens.index(args.user), min(args.topk, ds.n_items))
    print_explanation(ex, ds, names, args.recent, shown=min(len(names), 8))
    if args.plot:
        plot_explanation(ex, ds, names, args.plot, args.recent)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["tune"]:
            return tune(argv[1:])
        if argv[:1] == ["explain"]:
            return explain(argv[1:])
        return train_main(argv)
    except UsageError as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return 2
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def train_main(argv):
    args = parse_args(argv)
    if args.eval_only:
        if not os.path.exists(args.eval_only):
            raise UsageError(f"train.py: error: --eval_only: {args.eval_only}: file not found")
        eval_only(args.eval_only, {"device": args.device, "eval_batch_size": args.eval_batch_size, "data_path": args.data_path,
                                   "memory_backend": args.memory_backend})
    else:
        run(vars(args))
    return 0

if __name__ == "__main__":
    sys.exit(main())
