"""Train and evaluate KSR with RecBole's protocol.

    python train.py --dataset ml-100k                      # train, early-stop on valid MRR@10, test
    python train.py --dataset ml-100k --kg freebase        # RecBole's own (mislinked) Freebase files
    python train.py --dataset ml-100k --no_memory          # plain GRU4Rec baseline
    python train.py --eval_only runs/X/model.pt            # re-evaluate a saved model
    python train.py explain|tune|compare ...               (explain.py, tune.py, compare.py)

The path of a run, top to bottom: main -> parse_args (options and defaults: cli.py) -> run:
data.load_dataset, build_model (ksr.KSR with the memory --memory_impl names), then per epoch
train_epoch (p, loss = model(seq, lengths, targets); loss.backward(); opt.step()) and
evaluate on valid (full ranking); early stopping on valid MRR@10; the best checkpoint is tested.
"""
import contextlib
import math
import os
import platform
import runpy
import sys
import time

import numpy as np
import torch

import data
import distributed
import files
import kernels
import ksr
from cli import (DATA_ARGS, DEFAULTS, MODE_DEFAULTS, DataError, UsageError, UserError, cli, default_kg, given_options,
                 option_parser, transe_settings)

METRICS = ("recall", "mrr", "ndcg", "hit", "precision", "map")  # --metrics chooses among them (default: all but map)
BENCHMARK_IGNORES = ("split_ratio", "rm_dup_inter", "val_interval", "user_inter_num_interval", "item_inter_num_interval",
                     "entity_kg_num_interval", "relation_kg_num_interval")


def parse_args(argv=None, ap=None, config_dict=None):
    """train.py's options, checked and completed (mode defaults, the KG); bad ones raise UsageError.
    RecBole config files (--config_files) and a config_dict become the options' defaults, so the
    command line wins (recbole_config.py); args.config_sources says where each value came from."""
    ap = ap or option_parser("train.py", "Train KSR (RecBole's protocol) and report test metrics. More commands: "
                             "`train.py explain` and `train.py tune` (see --help of each).")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    sources = {name: "command line" if name in given_options(argv) else "default" for name in DEFAULTS}
    if args.config_files or config_dict:
        import recbole_config  # the YAML reader, only for a run that has a RecBole config
        sources = recbole_config.apply(ap, argv, args.config_files, config_dict)
        args = ap.parse_args(argv)
    args.config_sources = sources
    for key, value in MODE_DEFAULTS[args.train_mode].items():  # the defaults that depend on the training mode
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.kg = args.kg or default_kg(args.dataset)
    if args.window_stride and args.window_stride > args.MAX_ITEM_LIST_LENGTH:
        ap.error(f"--window_stride: must be at most MAX_ITEM_LIST_LENGTH ({args.MAX_ITEM_LIST_LENGTH}), got {args.window_stride}")
    args.window_stride = args.window_stride or args.MAX_ITEM_LIST_LENGTH
    name, _, k = args.valid_metric.partition("@")
    chosen = [m.lower() for m in args.metrics]
    if not args.eval_only and (name.lower() not in chosen or not k.isdigit() or int(k) not in args.topk):
        ap.error(f"--valid_metric: {args.valid_metric!r} is not one of --metrics {args.metrics} at a k in --topk "
                 f"{args.topk} (e.g. MRR@10)")
    args.eval_step = min(args.eval_step, args.epochs)  # RecBole's: a run validates at least once
    if args.benchmark_filename:
        if args.train_mode == "sequence":
            ap.error("--benchmark_filename: its files hold samples, not users' sequences, so they train in RecBole's "
                     "prefix mode: add --train_mode prefix (train_mode: prefix)")
        if (unused := [k for k in BENCHMARK_IGNORES if getattr(args, k) != DEFAULTS[k]]):
            ap.error(f"--{unused[0]}: RecBole neither filters nor splits benchmark files (--benchmark_filename): "
                     f"it would change nothing")
    if not 0 <= args.dropout_prob < 1:
        ap.error(f"--dropout_prob: must be in [0, 1), got {args.dropout_prob}")
    if args.memory_impl == "fused" and (why := kernels.unavailable_reason()):
        ap.error(f"--memory_impl fused: {why}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available on this machine")
    return args


# -----------------------------------------------------------------------------
# Evaluation: full ranking

def rank_of_target(scores, targets):
    """1-based rank of each target among all items. Ties: an item with the same score
    ranks ahead of the target if its id is smaller (as a stable sort by score would).
    A NaN score ranks below every number: a NaN target is last, never first."""
    s = scores.gather(1, targets[:, None])  # (B, 1)
    higher = (scores > s).sum(1)
    ids = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = ((scores == s) & (ids < targets[:, None])).sum(1)
    last = torch.full_like(higher, scores.shape[1] - 1)  # N: the last of the N real items
    return torch.where(s[:, 0].isnan(), last, 1 + higher + tied_before)


def user_metrics(ranks, k):
    """Each user's Recall, MRR, NDCG, Hit, Precision, MAP @k from the rank of their one target, as RecBole
    (float64 tensors): the metrics are their means; compare.py bootstraps them user by user."""
    ranks = ranks.double()
    hit = (ranks <= k).double()
    return {"recall": hit, "mrr": hit / ranks, "ndcg": hit / torch.log2(ranks + 1), "hit": hit, "precision": hit / k,
            "map": hit / ranks}  # RecBole's MAP with one relevant item: precision at its rank, 1/rank


def metrics_from_ranks(ranks, topk, metrics=METRICS[:5]):
    """Recall, MRR, NDCG, Hit, Precision, MAP @k for one ground-truth item per user, as RecBole
    (`metrics`: which, in RecBole's or lower-case spelling)."""
    chosen = {m.lower() for m in metrics}
    return {f"{name}@{k}": v.mean().item() for k in topk for name, v in user_metrics(ranks, k).items() if name in chosen}


def metrics_table(m, topk, decimals=4):
    lines = ["metric     " + "".join(f"{'@' + str(k):>10}" for k in topk)]
    for name in METRICS:
        if f"{name}@{topk[0]}" in m:
            lines.append(f"{name:<11}" + "".join(f"{m[f'{name}@{k}']:>10.{decimals}f}" for k in topk))
    return "\n".join(lines)


def batches(split, size, device="cpu", rank=0, world=1):
    """(start, item_seq, lengths, targets) of consecutive slices of `split`, in order, cut
    (data.Split.cut) one at a time; with world > 1 only slices rank, rank + world, ..."""
    for i in range(rank * size, len(split), world * size):
        yield (i,) + tuple(torch.as_tensor(a, device=device) for a in split.cut(np.arange(i, min(i + size, len(split)))))


class NonFiniteError(UserError):
    """A NaN or inf loss or score: the run stops (cli() prints one line, exit 1)."""


def evaluate(model, split, cfg, device, negatives=None):
    """Metrics of `split` (--metrics at every --topk), full ranking or among `negatives`."""
    return metrics_from_ranks(rank_all(model, split, cfg, device, negatives), cfg["topk"], cfg["metrics"])


@torch.no_grad()
def rank_all(model, split, cfg, device, negatives=None):
    """The rank of each sample's target among all items (split order), or among the target and its
    row of `negatives` (sampled evaluation, data.eval_negatives). With N processes each ranks whole
    batches, round-robin, as one process would, and the integer ranks are gathered: the same ranks,
    exactly."""
    model.eval()
    mine = {}  # batch start -> ranks of its users
    for i, seq, lengths, targets in batches(split, cfg["eval_batch_size"], device, distributed.rank(), distributed.world_size()):
        p, _ = model(seq, lengths)  # p_u after each user's last item
        scores = model.full_scores(p)
        bad = int((~torch.isfinite(scores[:, 1:])).sum())  # never rank a NaN, never report it as a metric
        if negatives is not None:  # sampled: every item but the target and its negatives scores -inf, ranked last
            keep = torch.as_tensor(negatives[i:i + len(seq)], device=scores.device)
            keep = torch.cat([keep, targets[:, None]], 1)
            scores = torch.full_like(scores, -math.inf).scatter_(1, keep, scores.gather(1, keep))
        mine[i] = f"{bad} item scores of the users {i}..{i + len(seq) - 1} are NaN or inf" if bad else \
            rank_of_target(scores, targets).cpu()
    ranks = distributed.gather(mine)
    errors = [r for r in ranks.values() if isinstance(r, str)]
    if errors:
        raise NonFiniteError(errors[0])
    return torch.cat([ranks[k] for k in sorted(ranks)])


# -----------------------------------------------------------------------------
# Training

MODEL_OPTIONS = ("embedding_size", "hidden_size", "num_layers", "dropout_prob", "gamma", "loss_type", "freeze_kg",
                 "no_memory", "pad_slot")
# --memory_impl: the function that computes ksr.kv_memory (each proven equal to it by the tests)
MEMORY_IMPLS = {"reference": ksr.kv_memory, "sorted": kernels.sorted_kv_memory, "fused": kernels.fused_kv_memory}


def build_model(cfg, ds):
    """ksr.KSR with RecBole's options and the fast paths --memory_impl names: the one seam between
    the reference (ksr.py alone: --memory_impl reference) and kernels/ (sorted, fused: that memory,
    with kernels.all_items_cross_entropy for the CE loss; on the CPU where a C++ compiler works,
    the compiled ones: kernels.cpu_gru_layer for the GRU, cpu_cross_entropy for the CE and, for a
    frozen KG, cpu_kv_memory)."""
    fast = cfg["memory_impl"] != "reference"
    compiled = wants_cpp_kernels(cfg) and kernels.cpu_unavailable_reason() is None
    return ksr.KSR(ds.n_items, ds.item_kg, ds.relation_kg, **{k: cfg[k] for k in MODEL_OPTIONS},
                   memory=kernels.cpu_kv_memory if compiled and cfg["freeze_kg"] else MEMORY_IMPLS[cfg["memory_impl"]],
                   ce=kernels.cpu_cross_entropy if compiled else kernels.all_items_cross_entropy if fast else ksr.cross_entropy,
                   gru_layer=kernels.cpu_gru_layer if compiled else None,
                   dropout=kernels.CPUDropout if compiled else torch.nn.Dropout)


def wants_cpp_kernels(cfg):
    """--memory_impl sorted on the CPU with --cpp_kernels auto: the compiled kernels, where they compile."""
    return cfg["memory_impl"] == "sorted" and cfg["device"] == "cpu" and cfg.get("cpp_kernels", "auto") == "auto"


def code_path(model, cfg):
    """One line: the functions this model runs (ksr.py's reference, or the fast paths)."""
    gru = "nn.GRU" if model.gru.layer is None else model.gru.layer.__name__
    why = kernels.cpu_unavailable_reason() if wants_cpp_kernels(cfg) else None
    return (f"code: memory {model.memory.__name__}, CE {model.ce.__name__}, GRU {gru}, "
            f"dropout {type(model.emb_dropout).__name__}" + f" ({why})" * bool(why)
            + f", {torch.get_num_threads()} thread" + "s" * (torch.get_num_threads() > 1))


# --learner: RecBole's names for torch's optimizers (trainer._build_optimizer)
LEARNERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
            "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}


def make_optimizer(model, cfg):
    params, learner = [p for p in model.parameters() if p.requires_grad], LEARNERS[cfg["learner"]]
    kw = dict(lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    if cfg["learner"] in ("adam", "adamw"):
        try:  # the same update as one loop over all parameters: ~4x faster than torch's default on the CPU
            return learner(params, fused=True, **kw)
        except (RuntimeError, TypeError):  # a torch or device without it
            pass
    return learner(params, **kw)


def train_epoch(model, opt, split, cfg, device, gen, progress):
    """One pass over `split` in a random order; returns the mean loss per target.

    `model` is the KSR or, under torchrun, the KSR inside DistributedDataParallel: then every
    process takes its contiguous slice of each batch, DDP averages the gradients over the
    processes, and the loss is scaled so that the average is the one-process step."""
    model.train()
    rank, world = distributed.rank(), distributed.world_size()
    ddp = world > 1
    raw_model = model.module if ddp else model  # the KSR itself
    all_steps = cfg["train_mode"] == "sequence"  # windows: a target after every step
    order = torch.randperm(len(split), generator=gen)  # the same on every rank: same seed, same draws
    # BPR with N negatives per target repeats each sample N times, in batches of train_batch_size rows (RecBole's)
    n_neg = cfg["train_neg_sample_num"] if cfg["loss_type"] == "BPR" else 1
    size = max(cfg["train_batch_size"] // n_neg, 1)
    n_batches = math.ceil(len(split) / size)
    n_batches = min(n_batches, cfg["max_steps"] or n_batches)
    total, count = 0.0, 0
    for b in range(n_batches):
        batch = np.repeat(order[b * size:(b + 1) * size].numpy(), n_neg)
        seq, lengths, targets = map(torch.as_tensor, split.cut(batch))
        negatives = ksr.sample_negatives(targets, raw_model.n_items, gen) if cfg["loss_type"] == "BPR" else None
        n_total = n_mine = int((targets > 0).sum())  # targets (B,), or (B, L) with 0 = none
        if ddp:  # this process's rows
            part = np.array_split(np.arange(len(targets)), world)[rank]
            n_mine = int((targets[part] > 0).sum())
            if len(part) == 0:  # every process joins every step; an empty slice computes row 0 and weighs it 0
                part = np.arange(1)
            seq, lengths, targets, negatives = (None if x is None else x[part] for x in (seq, lengths, targets, negatives))
        to = lambda x: None if x is None else x.to(device)
        _, loss = model(to(seq), to(lengths), to(targets), to(negatives), all_steps=all_steps)
        loss_sum = distributed.all_sum([loss.item() * n_mine], device)[0]  # the batch's, on every rank
        if not math.isfinite(loss_sum):  # stop before the step: the weights stay finite
            raise NonFiniteError(f"batch {b + 1}/{n_batches}: the training loss is {loss_sum / n_total}")
        opt.zero_grad(set_to_none=True)
        (loss * (n_mine * world / n_total)).backward()  # one process: loss * 1; DDP averages: the batch mean's gradient
        if cfg["clip_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad_norm"])
        opt.step()
        total += loss_sum
        count += n_total
        progress(b + 1, n_batches, total / count)
    return total / count


def make_progress(enabled):
    def progress(i, n, loss):
        if enabled:
            print(f"\r  batch {i}/{n}  loss {loss:.4f}", end="" if i < n else "\r" + " " * 40 + "\r", file=sys.stderr, flush=True)
    return progress


def load_data(cfg, log):
    return data.load_dataset(cfg["dataset"], cfg["data_path"], cfg["kg"], cfg["keep_unlinked"],
                             cfg["kg_embedding_size"], cfg["MAX_ITEM_LIST_LENGTH"], transe_settings(cfg), log=log,
                             data_args={k: cfg[k] for k in DATA_ARGS})


def eval_negatives(ds, cfg, log):
    """{"valid": ..., "test": ...}: each split's sampled negatives (--valid/test_eval_mode uniN, popN), None for
    full ranking; drawn once per run from --seed, so every epoch is validated on the same candidates."""
    gen = torch.Generator().manual_seed(cfg["seed"])
    out = {}
    for name in ("valid", "test"):
        mode = cfg[f"{name}_eval_mode"]
        out[name] = None if mode == "full" else data.eval_negatives(ds, getattr(ds, name), mode, gen)
        if out[name] is not None:
            log(f"{name}: each target ranked among {out[name].shape[1]} sampled items ({mode})")
    return out


def run(cfg, log=print):
    """Train with early stopping, test the best checkpoint; returns the results dict. Under
    torchrun every process runs this; only rank 0 logs and writes files. Rank 0 holds the run
    folder (files.run_folder: its .lock) from the check that it holds no run to the last write,
    so a second run into the same --out_dir is refused instead of mixing its files in."""
    out_dir = cfg["out_dir"] or os.path.join(cfg["checkpoint_dir"], f"{cfg['dataset']}-{cfg['kg']}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_files = os.path.join(out_dir, "model.pt"), os.path.join(out_dir, "results.json")
    with contextlib.ExitStack() as held:
        distributed.main_first(lambda: distributed.rank() == 0 and held.enter_context(
            files.run_folder(out_dir, run_files, cfg["overwrite"])))
        return train_and_test(cfg, *run_files, log)


def train_and_test(cfg, ckpt_path, results_path, log):
    """run()'s work, in a folder that run() holds."""
    t_start, is_main = time.time(), distributed.rank() == 0
    log = log if is_main else (lambda m: None)
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    device = torch.device(cfg["device"])
    ds = distributed.main_first(lambda: load_data(cfg, log))
    log(f"data: {ds.n_users} users, {ds.n_items} items, {len(ds.train)} train / {len(ds.valid)} valid / "
        f"{len(ds.test)} test samples, {len(ds.relation_tokens)} relations (kg={cfg['kg']})")
    model = build_model(cfg, ds).to(device)
    log(code_path(model, cfg))
    opt, train_model = make_optimizer(model, cfg), distributed.wrap(model, cfg["device"])  # under torchrun: DDP(model)
    gen = torch.Generator().manual_seed(cfg["seed"])
    train_split, all_steps = ds.train, cfg["train_mode"] == "sequence"
    if all_steps:
        train_split = data.sequence_windows(ds.seqs, ds.train, cfg["MAX_ITEM_LIST_LENGTH"], cfg["window_stride"])
        log(f"sequence mode: {len(train_split)} windows of at most {cfg['MAX_ITEM_LIST_LENGTH']} steps, "
            f"{train_split.n_targets()} targets, stride {cfg['window_stride']}")
    valid_key = cfg["valid_metric"].lower()
    negatives = eval_negatives(ds, cfg, log)
    progress = make_progress(is_main and cfg["show_progress"] and sys.stderr.isatty())
    epoch_seconds, eval_seconds, valid_hist, losses, valid_epochs = [], [], [], [], []  # epoch: training + valid evaluation
    best, best_epoch, bad = float("-inf"), -1, 0
    for epoch in range(cfg["epochs"]):
        t0 = time.time()
        validate = (epoch + 1) % cfg["eval_step"] == 0  # RecBole validates every eval_step epochs
        try:
            loss, t1 = train_epoch(train_model, opt, train_split, cfg, device, gen, progress), time.time()
            if validate:
                valid_ranks = rank_all(model, ds.valid, cfg, device, negatives["valid"])
                valid = metrics_from_ranks(valid_ranks, cfg["topk"], cfg["metrics"])
        except NonFiniteError as e:
            kept = f"the best checkpoint so far (epoch {best_epoch}) is kept in {ckpt_path}" if best_epoch >= 0 else "no checkpoint"
            raise NonFiniteError(f"epoch {epoch}, {e}: training stopped; {kept}") from None
        epoch_seconds.append(time.time() - t0)
        losses.append(loss)
        if not validate:
            log(f"epoch {epoch:3d}  loss {loss:.4f}  train {epoch_seconds[-1]:.1f}s")
            continue
        eval_seconds.append(time.time() - t1)
        valid_hist.append(valid)
        valid_epochs.append(epoch)
        score = valid[valid_key] if cfg["metric_decimal_place"] is None else round(valid[valid_key], cfg["metric_decimal_place"])
        improved = score >= best  # RecBole's early_stopping: a tie also counts as better
        if improved:  # every rank keeps the best weights in memory (no shared disk needed); rank 0 saves them
            best, best_epoch, bad, best_valid_ranks, best_valid = score, epoch, 0, valid_ranks, valid
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if is_main:
                files.save({"config": cfg, "fingerprint": ds.fingerprint, "stats": ds.stats, "epoch": epoch,
                                  "model": best_state}, ckpt_path)
        else:
            bad += 1
        log(f"epoch {epoch:3d}  loss {loss:.4f}  train {epoch_seconds[-1] - eval_seconds[-1]:.1f}s  valid ({eval_seconds[-1]:.1f}s) "
            + "  ".join(f"{k} {v:.4f}" for k, v in valid.items() if k in (valid_key, "ndcg@10", "hit@10"))
            + ("  *" if improved else ""))
        if bad > cfg["stopping_step"]:  # RecBole stops after stopping_step + 1 epochs without improvement
            log(f"early stop: no better valid {cfg['valid_metric']} for {bad} epochs")
            break

    model.load_state_dict(best_state)
    t1, test_ranks = time.time(), rank_all(model, ds.test, cfg, device, negatives["test"])
    test = metrics_from_ranks(test_ranks, cfg["topk"], cfg["metrics"])
    # every user's rank of the target: metrics recomputed, or compared user by user across runs, afterwards
    per_user = lambda split, ranks: {"user": [ds.user_tokens[u] for u in split.users.tolist()], "rank": ranks.tolist()}
    results = {
        "config": {k: v for k, v in cfg.items() if k != "config_sources"}, "config_sources": cfg.get("config_sources"),
        "dataset": ds.stats, "train_samples": len(train_split), "epoch_seconds": epoch_seconds,
        "eval_seconds": eval_seconds, "test_seconds": time.time() - t1, "train_loss": losses,
        "valid": valid_hist, "valid_epochs": valid_epochs, "best_epoch": best_epoch, "best_valid": best_valid,
        "test": test, "ranks": {"valid": per_user(ds.valid, best_valid_ranks), "test": per_user(ds.test, test_ranks)},
        "total_seconds": time.time() - t_start, "checkpoint": ckpt_path, "world_size": distributed.world_size(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    if is_main:
        files.save(results, results_path)
    log(f"best valid {cfg['valid_metric']} {best:.4f} at epoch {best_epoch}; test metrics of that checkpoint:")
    log(metrics_table(test, cfg["topk"], 4 if cfg["metric_decimal_place"] is None else cfg["metric_decimal_place"]))
    log(f"results: {results_path}  ({results['total_seconds']:.0f}s in all)")
    return results


# -----------------------------------------------------------------------------
# Checkpoints

def load_checkpoint(path, cfg_overrides, log=print):
    """(cfg, ds, model, epoch) of a saved model.pt, refusing data that changed since it was trained."""
    try:  # checked before any data is read: a truncated or foreign file can fail in any way
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        missing = {"config", "fingerprint", "epoch", "model"} - set(ckpt)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        cfg = {**DEFAULTS, "train_mode": "prefix", **ckpt["config"]}  # options newer than the checkpoint: as trained
        if "memory_backend" in cfg:  # memory_impl's earlier name and values
            cfg["memory_impl"] = {"torch": "sorted", "triton": "fused"}.get(cfg.pop("memory_backend"), "sorted")
    except Exception as e:
        raise DataError(f"{path}: not a checkpoint written by train.py ({type(e).__name__}: {e})".splitlines()[0]) from None
    # train.py never saves a NaN (a non-finite loss stops the run): one here was edited or damaged, and would
    # give NaN scores that explain prints as numbers
    bad = [f"its config's {k} is {v}" for k, v in ckpt["config"].items() if isinstance(v, float) and not math.isfinite(v)]
    bad += [f"its weight {k} holds NaN or inf" for k, v in ckpt["model"].items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(f"{path}: {bad[0]} (a damaged or hand-edited checkpoint; train it again)")
    cfg.update(cfg_overrides)
    ds = load_data(cfg, log)
    if ds.fingerprint != ckpt["fingerprint"]:
        raise DataError(f"{path}: the checkpoint was trained on data with fingerprint {ckpt['fingerprint']}, "
                             f"but {cfg['data_path']}/{cfg['dataset']} (kg={cfg['kg']}) now has {ds.fingerprint}")
    model = build_model(cfg, ds).to(cfg["device"])
    state = {k.replace("dense.", "read_query.") if k.startswith("dense.") else k: v for k, v in ckpt["model"].items()}
    try:  # (read_query was called dense in earlier checkpoints)
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"{path}: its weights do not fit its own config ({str(e).splitlines()[-1].strip()})") from None
    return cfg, ds, model, ckpt["epoch"]


def eval_only(path, cfg_overrides, log=print):
    cfg, ds, model, epoch = load_checkpoint(path, cfg_overrides, log)
    negatives = eval_negatives(ds, cfg, log)  # the training run's candidates: the same seed draws the same items
    out = {name: evaluate(model, getattr(ds, name), cfg, cfg["device"], negatives[name]) for name in ("valid", "test")}
    log(f"{path} (epoch {epoch}): test metrics")
    log(metrics_table(out["test"], cfg["topk"]))
    return out


# -----------------------------------------------------------------------------
# The command

EVAL_OPTIONS = ("device", "eval_batch_size", "data_path", "memory_impl", "cpp_kernels", "topk")  # what --eval_only can change


def train_main(argv):
    args = parse_args(argv)
    if args.eval_only:
        if distributed.launched():
            raise UsageError("train.py: error: --eval_only runs in one process: python train.py --eval_only ...")
        if not os.path.isfile(args.eval_only):
            raise UsageError(f"train.py: error: --eval_only: {args.eval_only}: file not found")
        other = sorted(given_options(argv) - {"eval_only", *EVAL_OPTIONS})
        if other:  # every option takes effect or is refused
            raise UsageError(f"train.py: error: --{other[0]}: --eval_only evaluates the checkpoint with its own settings "
                             f"(it takes {', '.join('--' + o for o in EVAL_OPTIONS)})")
        eval_only(args.eval_only, {k: getattr(args, k) for k in EVAL_OPTIONS})
    else:
        distributed.setup(args.device)  # under torchrun: join the other processes (distributed.py)
        try:
            run(vars(args))
        except BaseException:
            distributed.shutdown(finished=False)
            raise
        distributed.shutdown()
    return 0


def run_ksr(dataset=None, config_file_list=None, config_dict=None, argv=(), log=print):
    """RecBole's quick start for ksr: run_recbole(model="KSR", dataset=..., config_file_list=...,
    config_dict=...) becomes run_ksr(dataset=..., config_file_list=..., config_dict=...), a training run
    with RecBole's precedence (files in order, then config_dict, then `argv`, train.py's options);
    returns the results dict (results.json). Bad settings raise cli.UsageError, bad data cli.DataError."""
    argv = list(argv) + (["--dataset", dataset] if dataset else []) + (["--config_files", *config_file_list]
                                                                         if config_file_list else [])
    return run(vars(parse_args(argv, config_dict=config_dict)), log)


# `python train.py explain ...` runs explain.py, and so on: they import train.py, never the reverse
COMMANDS = {"explain": "explain.py", "tune": "tune.py", "compare": "compare.py"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in COMMANDS:
        program = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), COMMANDS[argv[0]]))
        return program["main"](argv[1:])
    return cli(train_main, argv)


if __name__ == "__main__":
    sys.exit(main())
