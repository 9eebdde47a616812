"""Train and evaluate KSR with RecBole's protocol.

    python train.py --dataset ml-100k                      # train, early-stop on valid MRR@10, test
    python train.py --dataset ml-100k --kg freebase        # RecBole's own (mislinked) Freebase files
    python train.py --dataset ml-100k --no_memory          # plain GRU4Rec baseline
    python train.py --dataset ml-100k --kernels reference  # ksr.py alone (kernels/__init__.py: the table)
    python train.py --eval_only runs/X/model.pt            # re-evaluate a saved model
    python train.py explain|tune|compare|recommend ...     # extras/explain.py, tune.py, compare.py, recommend.py

A run, top to bottom: main -> parse_args (options.py) -> run: run_folder, data.load_dataset,
build_model (ksr.KSR with the kernels --kernels picks), fit (per epoch train_epoch: forward, loss,
backward, step; rank_all on valid; early stopping on valid MRR@10), the best checkpoint tested.
Under torchrun the `world_size > 1` lines split each batch and gather the ranks.
"""
import contextlib
import importlib
import io
import itertools
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import kernels
import ksr
from options import (DATA_ARGS, DEFAULTS, FOLLOWS, DataError, UsageError, UserError, cli, given_options, option_parser,
                     transe_settings)

METRICS = ("recall", "mrr", "ndcg", "hit", "precision", "map")  # --metrics chooses among them (default: all but map)


def parse_args(argv=None, ap=None, config_dict=None):
    """train.py's options, checked (a bad one raises UsageError). RecBole's options join the parser when
    the command line names one (extras/recbole_config.py): config files and a config_dict become the
    defaults, so the command line wins; args.config_sources says where each value came from. A default
    that follows another option (options.FOLLOWS) follows it when nothing set it."""
    ap = ap or option_parser("train.py", "Train KSR (RecBole's protocol) and report test metrics. More commands: "
                             "`train.py explain`, `train.py tune` and `train.py compare` (see --help of each).")
    argv = sys.argv[1:] if argv is None else list(argv)
    recbole = None
    if ap.needs_recbole(argv) or config_dict:
        from extras import recbole_config as recbole
        recbole.add_options(ap)
    args = ap.parse_args(argv)
    sources = {name: "command line" if name in given_options(argv) else "default" for name in DEFAULTS}
    if args.config_files or config_dict:
        sources = recbole.apply(ap, argv, args.config_files, config_dict)
        args = ap.parse_args(argv)
    args.config_sources = sources
    for key, rule in FOLLOWS.items():
        if sources[key] == "default":
            setattr(args, key, rule(vars(args)))
    if args.window_stride > args.MAX_ITEM_LIST_LENGTH:
        ap.error(f"--window_stride: must be at most MAX_ITEM_LIST_LENGTH ({args.MAX_ITEM_LIST_LENGTH}), got {args.window_stride}")
    name, _, k = args.valid_metric.partition("@")
    if not args.eval_only and (name.lower() not in [m.lower() for m in args.metrics] or not k.isdigit()
                               or int(k) not in args.topk):
        ap.error(f"--valid_metric: {args.valid_metric!r} is not one of --metrics {args.metrics} at a k in --topk "
                 f"{args.topk} (e.g. MRR@10)")
    args.eval_step = min(args.eval_step, args.epochs)  # RecBole's: a run validates at least once
    if recbole:
        recbole.check_args(ap, args)
    if not 0 <= args.dropout_prob < 1:
        ap.error(f"--dropout_prob: must be in [0, 1), got {args.dropout_prob}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available on this machine")
    if args.kernels in ("cpp", "triton") and (why := kernels.unavailable(args.kernels, args.device)):
        ap.error(f"--kernels {args.kernels}: {why}")
    return args


# -----------------------------------------------------------------------------
# Evaluation: full ranking

def rank_of_target(scores, targets):
    """1-based rank of each target among all items. Ties: an item with the same score ranks ahead of the
    target if its id is smaller (a stable sort by score). A NaN target is last, never first."""
    target_score = scores.gather(1, targets[:, None])  # (B, 1)
    higher = (scores > target_score).sum(1)
    ids = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = ((scores == target_score) & (ids < targets[:, None])).sum(1)
    last = torch.full_like(higher, scores.shape[1] - 1)  # N: the last of the N real items
    return torch.where(target_score[:, 0].isnan(), last, 1 + higher + tied_before)


def user_metrics(ranks, k):
    """Each user's Recall, MRR, NDCG, Hit, Precision, MAP @k from the rank of their one target, as RecBole's."""
    ranks = ranks.double()
    hit = (ranks <= k).double()
    return {"recall": hit, "mrr": hit / ranks, "ndcg": hit / torch.log2(ranks + 1), "hit": hit, "precision": hit / k,
            "map": hit / ranks}  # RecBole's MAP with one relevant item: precision at its rank, 1/rank


def metrics_from_ranks(ranks, topk, metrics=METRICS[:5]):
    """The means of user_metrics: `metrics` (RecBole's or lower-case names) at every k of topk."""
    chosen = {m.lower() for m in metrics}
    return {f"{name}@{k}": v.mean().item() for k in topk for name, v in user_metrics(ranks, k).items() if name in chosen}


def metrics_table(m, topk, decimals=4):  # a row per metric, a column per k
    rows = [f"{name:<11}" + "".join(f"{m[f'{name}@{k}']:>10.{decimals}f}" for k in topk) for name in METRICS
            if f"{name}@{topk[0]}" in m]
    return "\n".join(["metric     " + "".join(f"{'@' + str(k):>10}" for k in topk)] + rows)


def batches(split, size, device="cpu", rank=0, world=1):
    """(start, item_seq, lengths, targets) of `split`'s slices in order (with world > 1: rank, rank + world, ...)."""
    for i in range(rank * size, len(split), world * size):
        yield (i,) + tuple(torch.as_tensor(a, device=device) for a in split.cut(np.arange(i, min(i + size, len(split)))))


class NonFiniteError(UserError):
    """A NaN or inf loss or score: the run stops (cli() prints one line, exit 1)."""


def world():  # (this process's rank, the number of processes): (0, 1) unless torchrun started the job
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


@torch.no_grad()
def rank_all(model, split, cfg, device, candidates=None, show=False):
    """The rank of each sample's target among all items (split order), or among the target and its row
    of `candidates` (sampled evaluation). Under torchrun each process ranks whole batches, round-robin,
    and the integer ranks are gathered: the same ranks as one process's, exactly."""
    model.eval()
    rank, world_size = world()
    mine = {}  # batch start -> ranks of its users, or why they cannot be ranked
    steps = batches(split, cfg["eval_batch_size"], device, rank, world_size)  # show: a progress bar, as train_epoch's
    for i, seq, lengths, targets in tqdm(steps, disable=not show, total=-(-len(split) // cfg["eval_batch_size"] // world_size),
                                         leave=False, unit="batch", file=sys.stderr):
        p, _ = model(seq, lengths)  # p_u after each user's last item
        scores = model.full_scores(p)
        n_nonfinite = int((~torch.isfinite(scores[:, 1:])).sum())  # never rank a NaN, never report it as a metric
        if candidates is not None:  # sampled: every item but the target and its candidates scores -inf, ranked last
            keep = torch.cat([torch.as_tensor(candidates[i:i + len(seq)], device=scores.device), targets[:, None]], 1)
            scores = torch.full_like(scores, -math.inf).scatter_(1, keep, scores.gather(1, keep))
        mine[i] = f"{n_nonfinite} item scores of the users {i}..{i + len(seq) - 1} are NaN or inf" if n_nonfinite \
            else rank_of_target(scores, targets).cpu()
    if world_size > 1:  # every process's batches, on every process
        parts = [None] * world_size
        dist.all_gather_object(parts, mine)
        mine = {k: v for part in parts for k, v in part.items()}
    errors = [r for r in mine.values() if isinstance(r, str)]
    if errors:
        raise NonFiniteError(errors[0])
    return torch.cat([mine[k] for k in sorted(mine)])


# -----------------------------------------------------------------------------
# Training

MODEL_OPTIONS = ("embedding_size", "hidden_size", "num_layers", "dropout_prob", "gamma", "loss_type", "freeze_kg",
                 "no_memory", "pad_slot")


def build_model(cfg, ds, log=print):
    """ksr.KSR with RecBole's options, computed by the kernels --kernels picks (kernels.choose: the
    one table of implementations); model.kernels records the choice."""
    try:
        chosen = kernels.choose(cfg["kernels"], cfg["device"], cfg["freeze_kg"], log)
    except ValueError as e:
        raise UsageError(f"train.py: error: {e}") from None
    fn = lambda op: kernels.function(op, chosen[op])
    items = command("bprmf")(cfg, ds, log) if cfg["item_embedding"] == "bprmf" else None  # the authors' x_i
    model = ksr.KSR(ds.n_items, ds.item_kg, ds.relation_kg, **{k: cfg[k] for k in MODEL_OPTIONS}, item_vectors=items,
                    memory=fn("memory"), ce=fn("ce"), gru_layer=fn("gru"), dropout=fn("dropout"))
    model.kernels = chosen
    return model


# --learner: RecBole's names for torch's optimizers (its trainer._build_optimizer)
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


def train_epoch(model, opt, split, cfg, device, gen, show=False):
    """One pass over `split` in a random order; returns the mean loss per target.

    Under torchrun `model` is the KSR inside DistributedDataParallel: every process takes its
    contiguous slice of each batch, DDP averages the gradients over the processes, and the loss is
    scaled so that the average is the one-process step. show: a progress bar on stderr (tqdm)."""
    model.train()
    rank, world_size = world()
    n_items = (model.module if world_size > 1 else model).n_items
    all_steps = cfg["train_mode"] == "sequence"  # windows: a target after every step
    order = torch.randperm(len(split), generator=gen)  # the same on every rank: same seed, same draws
    # BPR with N negatives per target repeats each sample N times, in batches of train_batch_size rows (RecBole's)
    n_neg = cfg["train_neg_sample_num"] if cfg["loss_type"] == "BPR" else 1
    size = max(cfg["train_batch_size"] // n_neg, 1)
    n_batches = math.ceil(len(split) / size)
    n_batches = min(n_batches, cfg["max_steps"] or n_batches)
    total, count = 0.0, 0
    sample = ksr.sample_negatives if cfg["train_neg_sample_distribution"] == "uniform" else command("popularity")(split, n_items)
    bar = tqdm(range(n_batches), disable=not show, leave=False, unit="batch", file=sys.stderr)
    for b in bar:
        rows = np.repeat(order[b * size:(b + 1) * size].numpy(), n_neg)
        seq, lengths, targets = map(torch.as_tensor, split.cut(rows))  # targets (B,), or (B, L) with 0 = none
        negatives = sample(targets, n_items, gen) if cfg["loss_type"] == "BPR" else None
        n_total = n_mine = int((targets > 0).sum())
        if world_size > 1:  # this process's rows; every process joins every step (an empty slice: row 0, weight 0)
            part = np.array_split(np.arange(len(targets)), world_size)[rank]
            n_mine = int((targets[part] > 0).sum())
            part = part if len(part) else np.arange(1)
            seq, lengths, targets, negatives = (None if x is None else x[part] for x in (seq, lengths, targets, negatives))
        to = lambda x: None if x is None else x.to(device)

        p, loss = model(to(seq), to(lengths), to(targets), to(negatives), all_steps=all_steps)  # forward and loss
        loss_sum = loss.item() * n_mine
        if world_size > 1:  # the batch's loss, summed over the processes
            t = torch.tensor([loss_sum], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            loss_sum = t.item()
        if not math.isfinite(loss_sum):  # stop before the step: the weights stay finite
            raise NonFiniteError(f"batch {b + 1}/{n_batches}: the training loss is {loss_sum / n_total}")
        opt.zero_grad(set_to_none=True)
        (loss * (n_mine * world_size / n_total)).backward()  # one process: loss * 1; DDP averages: the batch mean's
        if cfg["clip_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad_norm"])
        opt.step()

        total += loss_sum
        count += n_total
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / count


def load_data(cfg, log):
    return data.load_dataset(cfg["dataset"], cfg["data_path"], cfg["kg"], cfg["keep_unlinked"],
                             cfg["kg_embedding_size"], cfg["MAX_ITEM_LIST_LENGTH"], transe_settings(cfg), log=log,
                             data_args={k: cfg[k] for k in DATA_ARGS}, show=cfg["show_progress"] and not cfg["quiet"])


def run(cfg, log=print):
    """Train with early stopping, test the best checkpoint; returns the results dict (results.json).
    Under torchrun every process runs this; only rank 0 logs and writes files."""
    rank, world_size = world()
    log = log if rank == 0 else (lambda m: None)
    with run_folder(cfg) as out_dir:
        ckpt_path, results_path = os.path.join(out_dir, "model.pt"), os.path.join(out_dir, "results.json")
        t_start = time.time()
        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"])
        device = torch.device(cfg["device"])
        ds = rank0_first(lambda: load_data(cfg, log))
        log(f"data: {ds.n_users} users, {ds.n_items} items, {len(ds.train)} train / {len(ds.valid)} valid / "
            f"{len(ds.test)} test samples, {len(ds.relation_tokens)} relations (kg={cfg['kg']})")
        model = build_model(cfg, ds, log).to(device)
        log(kernels.describe(model.kernels))
        opt = make_optimizer(model, cfg)
        train_model = model  # what train_epoch calls: under torchrun DDP, which averages the gradients over processes
        if world_size > 1:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[torch.cuda.current_device()] if cfg["device"] == "cuda" else None)
        train_split = ds.train
        if cfg["train_mode"] == "sequence":
            train_split = data.sequence_windows(ds.seqs, ds.train, cfg["MAX_ITEM_LIST_LENGTH"], cfg["window_stride"])
            log(f"sequence mode: {len(train_split)} windows of at most {cfg['MAX_ITEM_LIST_LENGTH']} steps, "
                f"{train_split.n_targets()} targets, stride {cfg['window_stride']}")
        candidates = dict.fromkeys(("valid", "test"))  # None: full ranking; else RecBole's sampled evaluation
        if cfg["valid_eval_mode"] != "full" or cfg["test_eval_mode"] != "full":
            from extras.sampled_eval import run_candidates
            candidates = run_candidates(ds, cfg, log)

        h = fit(model, train_model, opt, train_split, ds, cfg, device, candidates, ckpt_path, log)
        model.load_state_dict(h.pop("best_state"))
        t1, test_ranks = time.time(), rank_all(model, ds.test, cfg, device, candidates["test"])
        test = metrics_from_ranks(test_ranks, cfg["topk"], cfg["metrics"])
        # every user's rank of the target: metrics recomputed, or compared user by user across runs, afterwards
        per_user = lambda split, ranks: {"user": [ds.user_tokens[u] for u in split.users.tolist()], "rank": ranks.tolist()}
        ranks = {"valid": per_user(ds.valid, h.pop("best_valid_ranks")), "test": per_user(ds.test, test_ranks)}
        results = {
            "config": {k: v for k, v in cfg.items() if k != "config_sources"}, "config_sources": cfg.get("config_sources"),
            "kernels": model.kernels, "dataset": ds.stats, "train_samples": len(train_split), **h, "test": test,
            "ranks": ranks, "test_seconds": time.time() - t1, "total_seconds": time.time() - t_start,
            "checkpoint": ckpt_path, "world_size": world_size,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        }
        if rank == 0:
            save(results, results_path)
            os.remove(os.path.join(out_dir, "last.pt"))  # finished: nothing to resume
    log(f"best valid {cfg['valid_metric']} {h['best_score']:.4f} at epoch {h['best_epoch']}; test metrics of that checkpoint:")
    log(metrics_table(test, cfg["topk"], 4 if cfg["metric_decimal_place"] is None else cfg["metric_decimal_place"]))
    log(f"results: {results_path}  ({results['total_seconds']:.0f}s in all)")
    return results


def fit(model, train_model, opt, train_split, ds, cfg, device, candidates, ckpt_path, log):
    """The epochs: train_epoch, and every eval_step epochs rank_all on valid; the best valid epoch's weights
    kept (and saved by rank 0), early stopping as RecBole's. Returns the history, the best weights."""
    is_main = world()[0] == 0
    show = is_main and cfg["show_progress"] and not cfg["quiet"] and sys.stderr.isatty()  # progress bars
    gen = torch.Generator().manual_seed(cfg["seed"])
    valid_key = cfg["valid_metric"].lower()
    h = {"epoch_seconds": [], "eval_seconds": [], "train_loss": [], "valid": [], "valid_epochs": []}
    start, best, best_epoch, since_best = 0, float("-inf"), -1, 0  # since_best: epochs without a better valid metric
    if cfg.get("resume_state"):  # --resume: where the stopped run was, bit for bit (extras/checkpoint.py)
        start, h, best, best_epoch, since_best = command("restore")(cfg["resume_state"], model, opt, gen, cfg)
    last = lambda epoch: is_main and save(dict(epoch=epoch, h=h, best=best, best_epoch=best_epoch, since_best=since_best,
        config=cfg, model=model.state_dict(), opt=opt.state_dict(), rng=(torch.get_rng_state(), gen.get_state())),
        os.path.join(os.path.dirname(ckpt_path), "last.pt"))  # every epoch: what --resume goes on from
    for epoch in range(start, cfg["epochs"]):
        t0 = time.time()
        validate = (epoch + 1) % cfg["eval_step"] == 0  # RecBole validates every eval_step epochs
        try:
            loss, t1 = train_epoch(train_model, opt, train_split, cfg, device, gen, show), time.time()
            if validate:
                valid_ranks = rank_all(model, ds.valid, cfg, device, candidates["valid"], show)
                valid = metrics_from_ranks(valid_ranks, cfg["topk"], cfg["metrics"])
        except NonFiniteError as e:
            kept = f"the best checkpoint so far (epoch {best_epoch}) is kept in {ckpt_path}" if best_epoch >= 0 else "no checkpoint"
            raise NonFiniteError(f"epoch {epoch}, {e}: training stopped; {kept}") from None
        h["epoch_seconds"].append(time.time() - t0)
        h["train_loss"].append(loss)
        if not validate:
            last(epoch)  # saved before the epoch is said: a run stopped after its line goes on from it
            log(f"epoch {epoch:3d}  loss {loss:.4f}  train {h['epoch_seconds'][-1]:.1f}s")
            continue
        h["eval_seconds"].append(time.time() - t1)
        h["valid"].append(valid)
        h["valid_epochs"].append(epoch)
        score = valid[valid_key] if cfg["metric_decimal_place"] is None else round(valid[valid_key], cfg["metric_decimal_place"])
        improved = score >= best  # RecBole's early_stopping: a tie also counts as better
        if improved:  # every rank keeps the best weights in memory (no shared disk needed); rank 0 saves them
            best, best_epoch, since_best = score, epoch, 0
            h.update(best_valid=valid, best_valid_ranks=valid_ranks,
                     best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
            if is_main:
                save({"config": cfg, "fingerprint": ds.fingerprint, "stats": ds.stats, "epoch": epoch,
                      "model": h["best_state"]}, ckpt_path)
        else:
            since_best += 1
        last(epoch)
        log(f"epoch {epoch:3d}  loss {loss:.4f}  train {h['epoch_seconds'][-1] - h['eval_seconds'][-1]:.1f}s  valid "
            f"({h['eval_seconds'][-1]:.1f}s) " + "  ".join(f"{k} {v:.4f}" for k, v in valid.items()
                                                          if k in (valid_key, "ndcg@10", "hit@10"))
            + ("  *" if improved else ""))
        if since_best > cfg["stopping_step"]:  # RecBole stops after stopping_step + 1 epochs without improvement
            log(f"early stop: no better valid {cfg['valid_metric']} for {since_best} epochs")
            break
    return dict(h, best_epoch=best_epoch, best_score=best)


# -----------------------------------------------------------------------------
# The run folder: one run's alone, its files whole

def rank0_first(fn):  # fn() on rank 0, then on the others; rank 0's error raised on all (extras/distributed.py)
    if world()[1] == 1:
        return fn()
    from extras.distributed import main_first
    return main_first(fn)


@contextlib.contextmanager
def run_folder(cfg):
    """The run's folder, this run's alone from before any long work to the last write: a new folder
    under --checkpoint_dir (os.mkdir makes it or fails: two runs started in the same second get two),
    or --out_dir, held by a lock and refused if it holds a run unless --overwrite (extras/run_lock.py).
    Under torchrun rank 0 makes or holds it; an error there stops every process."""
    with contextlib.ExitStack() as held:
        def claim():
            if cfg["out_dir"]:
                from extras.run_lock import run_folder as held_folder
                run_files = [os.path.join(cfg["out_dir"], f) for f in ("model.pt", "results.json", "last.pt")]
                return held.enter_context(held_folder(cfg["out_dir"], run_files, cfg["overwrite"], cfg.get("resume_state")))
            stem = os.path.join(cfg["checkpoint_dir"], f"{cfg['dataset']}-{cfg['kg']}-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                for folder in (stem + f"-{k}" * (k > 1) for k in itertools.count(1)):  # a second run this second: -2
                    with contextlib.suppress(FileExistsError):
                        os.makedirs(folder)
                        return folder
            except OSError as e:
                raise DataError(f"{stem}: cannot write the run there ({e.strerror or e})") from None
        yield rank0_first(lambda: claim() if world()[0] == 0 else cfg["out_dir"] or "(rank 0's run folder)")


def save(obj, path):
    """results.json (a dict) or a checkpoint (torch.save), written whole or not at all (data.replacing)."""
    if path.endswith(".json"):
        payload = json.dumps(obj, indent=1).encode()
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)  # in memory first: torch's own writer turns a full disk into an opaque RuntimeError
        payload = buf.getbuffer()
    with data.replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)


# -----------------------------------------------------------------------------
# The command

def train_main(argv):
    args = parse_args(argv)
    if args.eval_only or args.resume:  # a saved model.pt read back, or a stopped run gone on with
        (cfg := command("eval_only" if args.eval_only else "resume")(args, argv)) and run(cfg)
    elif not launched():
        run(vars(args))
    else:  # under torchrun: join the other processes, run, leave (extras/distributed.py)
        from extras import distributed
        distributed.run_job(run, vars(args))
    return 0


def launched():  # under torchrun, with more than one process
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# The programs around the core that train.py runs: `python train.py explain ...` is extras/explain.py's main,
# --eval_only extras/checkpoint.py's eval_only_command. They import train.py, never the reverse: train.py reaches them
# by name (importlib), when one is asked for.
COMMANDS = {"explain": "extras.explain:main", "tune": "extras.tune:main", "compare": "extras.compare:main",
            "recommend": "extras.recommend:main", "eval_only": "extras.checkpoint:eval_only_command",
            "resume": "extras.checkpoint:resume_command", "restore": "extras.checkpoint:restore",
            "popularity": "extras.paper:popularity_sampler", "bprmf": "extras.bprmf:item_vectors"}


def command(name):
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in ("explain", "tune", "compare", "recommend"):
        return command(argv[0])(argv[1:])
    return cli(train_main, argv)


if __name__ == "__main__":
    sys.exit(main())
