"""Train and evaluate KSR with RecBole's protocol.

    python train.py --dataset ml-100k                      # train, early-stop on valid MRR@10, test
    python train.py --dataset ml-100k --kg attributes      # the correct attribute KG
    python train.py --dataset ml-100k --no_memory          # plain GRU4Rec baseline
    python train.py --dataset ml-100k --train_mode prefix  # train on RecBole's prefix samples
    python train.py --eval_only runs/X/model.pt            # re-evaluate a saved model

Protocol (RecBole's sequential full ranking): leave-one-out by time; every item is scored
for each valid/test sequence, only the padding item is excluded; early stopping on valid
MRR@10; test metrics from the best valid checkpoint. Training: --train_mode sequence (the
default) predicts the next item at every step of windows of a user's training items;
--train_mode prefix makes every prefix a sample, as RecBole does. Both see the same targets.
"""
import argparse
import ctypes
import json
import math
import os
import pickle
import platform
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
    train_mode="sequence", window_stride=None,
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
    return parse


def topk_list(v):
    try:
        ks = [int(k) for k in v.strip("[]").split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list of positive integers such as [10] or 5,10,20, got {v!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {v!r}")
    return ks


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None):
    d = DEFAULTS
    ap = Parser(prog="train.py", description="Train KSR (RecBole's protocol) and report test metrics.")
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


@torch.no_grad()
def evaluate(model, split, cfg, device):
    model.eval()
    ranks = []
    for i in range(0, len(split), cfg["eval_batch_size"]):
        seq = torch.as_tensor(split.item_seq[i:i + cfg["eval_batch_size"]], device=device)
        lengths = torch.as_tensor(split.lengths[i:i + cfg["eval_batch_size"]], device=device)
        targets = torch.as_tensor(split.targets[i:i + cfg["eval_batch_size"]], device=device)
        scores = model.full_scores(model(seq, lengths))
        ranks.append(rank_of_target(scores, targets))
    return metrics_from_ranks(torch.cat(ranks).cpu(), cfg["topk"])


# -----------------------------------------------------------------------------
# training

def build_model(cfg, ds):
    return KSR(ds.n_items, ds.item_kg, ds.relation_kg, embedding_size=cfg["embedding_size"],
               hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"], dropout_prob=cfg["dropout_prob"],
               gamma=cfg["gamma"], loss_type=cfg["loss_type"], freeze_kg=cfg["freeze_kg"], no_memory=cfg["no_memory"],
               memory_backend=cfg.get("memory_backend", "torch"))


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
    for i in range(0, len(split), 1024):
        seq = torch.as_tensor(split.item_seq[i:i + 1024], device=device)
        lengths = torch.as_tensor(split.lengths[i:i + 1024], device=device)
        V[i:i + 1024] = model.write_memory(seq, lengths, all_steps)
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


def eval_only(path, cfg_overrides, log=print):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        cfg = dict(ckpt["config"])
    except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as e:
        raise data.DataError(f"{path}: not a checkpoint written by train.py ({type(e).__name__}: {e})".splitlines()[0]) from None
    cfg.update(cfg_overrides)
    ds = load_data(cfg, log)
    if ds.fingerprint != ckpt["fingerprint"]:
        raise data.DataError(f"{path}: the checkpoint was trained on data with fingerprint {ckpt['fingerprint']}, "
                             f"but {cfg['data_path']}/{cfg['dataset']} (kg={cfg['kg']}) now has {ds.fingerprint}")
    model = build_model(cfg, ds).to(cfg["device"])
    model.load_state_dict(ckpt["model"])
    out = {"valid": evaluate(model, ds.valid, cfg, cfg["device"]), "test": evaluate(model, ds.test, cfg, cfg["device"])}
    log(f"{path} (epoch {ckpt['epoch']}): test metrics")
    log(metrics_table(out["test"], cfg["topk"]))
    return out


def main(argv=None):
    args = parse_args(argv)
    cfg = vars(args)
    try:
        if args.eval_only:
            if not os.path.exists(args.eval_only):
                print(f"train.py: error: --eval_only: {args.eval_only}: file not found", file=sys.stderr)
                return 2
            eval_only(args.eval_only, {"device": args.device, "eval_batch_size": args.eval_batch_size, "data_path": args.data_path})
        else:
            run(cfg)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
