"""Train and evaluate KSR with RecBole's protocol.

    python train.py --dataset ml-100k                      # train, early-stop on valid MRR@10, test
    python train.py --dataset ml-100k --kg freebase        # RecBole's own (mislinked) Freebase files
    python train.py --dataset ml-100k --no_memory          # plain GRU4Rec baseline
    python train.py --eval_only runs/X/model.pt            # re-evaluate a saved model
    python train.py explain ...   /   python train.py tune ...   (explain.py, tune.py)

The path of a run, top to bottom: main -> parse_args -> run: data.load_dataset, build_model,
memory_cache, then per epoch train_epoch (KSR.forward, KSR.loss, Adam) and evaluate on valid
(full ranking); early stopping on valid MRR@10; the best checkpoint is tested.
"""
import math
import os
import platform
import sys
import time

import numpy as np
import torch

import data
import distributed
import kernels
from cli import Parser, UsageError, UserError, cli, given_options, number, positive, str2bool, topk_list
from ksr import KSR, sample_negatives

# -----------------------------------------------------------------------------
# Defaults: RecBole's names and values (KSR.yaml, overall.yaml), the one place they are set.
# data.py, explain.py, tune.py and the bench scripts read their options from here.
DEFAULTS = dict(
    dataset="ml-100k", data_path="dataset", kg=None, keep_unlinked=False,  # kg None: data.default_kg
    embedding_size=64, kg_embedding_size=64, hidden_size=128, num_layers=1, dropout_prob=0.1,
    gamma=10.0, loss_type="CE", freeze_kg=True, no_memory=False, pad_slot=False,
    learning_rate=0.001, train_batch_size=2048, eval_batch_size=4096, epochs=300, stopping_step=10,
    MAX_ITEM_LIST_LENGTH=50, topk=[10], valid_metric="MRR@10", seed=2020, device="cpu",
    memory_impl="sorted", max_steps=0, out_dir=None, overwrite=False, eval_only=None,
    train_mode="sequence", window_stride=None,
)
# --train_mode sequence: a batch counts windows (~2,000 per epoch on ml-100k), not prefixes
SEQUENCE_DEFAULTS = dict(train_batch_size=16, learning_rate=0.001)  # chosen on valid MRR@10 (docs/results.md)
METRICS = ("recall", "mrr", "ndcg", "hit", "precision")
MEMORY_CACHE_BYTES = 2 * 2 ** 30  # the frozen-KG memory cache's budget (memory_cache)


def option_parser(prog, description, names=None):
    """An argparse parser with train.py's options (all, or those in `names`), defaults from DEFAULTS."""
    ap = Parser(prog=prog, description=description, allow_abbrev=False)
    pint, pfloat, d, sd = positive(int), positive(float), DEFAULTS, SEQUENCE_DEFAULTS
    options = [
        ("dataset", {}), ("data_path", {}),
        ("kg", dict(choices=["freebase", "attributes"], help="freebase: the dataset's .kg/.link files (ml-100k: "
                    "RecBole's mislinked ones); attributes: a KG from the .item file; default: attributes for ml-100k")),
        ("keep_unlinked", dict(type=str2bool, help="keep interactions whose item has no KG link (zero KG vector)")),
        *[(name, dict(type=pint)) for name in ("embedding_size", "kg_embedding_size", "hidden_size", "num_layers")],
        ("dropout_prob", dict(type=number(float))), ("gamma", dict(type=number(float))),
        ("loss_type", dict(choices=["CE", "BPR"])), ("freeze_kg", dict(type=str2bool)),
        ("no_memory", dict(action="store_true", help="plain GRU4Rec: no knowledge memory")),
        ("pad_slot", dict(type=str2bool, help="one more memory slot with a zero key, as RecBole's padding relation gives")),
        ("learning_rate", dict(type=pfloat, default=None, help=f"default {d['learning_rate']} (sequence: {sd['learning_rate']})")),
        ("train_batch_size", dict(type=pint, default=None, help=f"default {d['train_batch_size']} (sequence: {sd['train_batch_size']})")),
        ("train_mode", dict(choices=["prefix", "sequence"], help="RecBole's prefix samples, or windows (README)")),
        ("window_stride", dict(type=pint, help="sequence mode: a window every this many steps (default: no overlap)")),
        *[(name, dict(type=pint)) for name in ("eval_batch_size", "epochs", "stopping_step", "MAX_ITEM_LIST_LENGTH")],
        ("topk", dict(type=topk_list)), ("valid_metric", {}),
        ("seed", dict(type=number(int, 0, 2 ** 32 - 1))), ("device", dict(choices=["cpu", "cuda"])),
        ("memory_impl", dict(choices=["reference", "sorted", "fused"], help="the code that computes the memory "
                             "(ksr.KSR): fused is the Triton kernel (a CUDA GPU, or the CPU under TRITON_INTERPRET=1)")),
        ("max_steps", dict(type=number(int, 0), help="stop each epoch after this many batches (0: all)")),
        ("out_dir", dict(help="run folder (default runs/<dataset>-<kg>-<time>)")),
        ("overwrite", dict(action="store_true", help="train into an --out_dir that holds a run (its files are replaced)")),
        ("eval_only", dict(metavar="CHECKPOINT", help="re-evaluate a saved model.pt")),
    ]
    for name, kw in options:
        if names is None or name in names:
            ap.add_argument("--" + name, **{"default": d[name], **kw})
    return ap


def parse_args(argv=None, ap=None):
    """train.py's options, checked and completed (mode defaults, the KG); bad ones raise UsageError."""
    ap = ap or option_parser("train.py", "Train KSR (RecBole's protocol) and report test metrics. More commands: "
                             "`train.py explain` and `train.py tune` (see --help of each).")
    args = ap.parse_args(argv)
    mode_defaults = SEQUENCE_DEFAULTS if args.train_mode == "sequence" else DEFAULTS
    for key in ("learning_rate", "train_batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, mode_defaults[key])
    args.kg = args.kg or data.default_kg(args.dataset)
    if args.window_stride and args.window_stride > args.MAX_ITEM_LIST_LENGTH:
        ap.error(f"--window_stride: must be at most MAX_ITEM_LIST_LENGTH ({args.MAX_ITEM_LIST_LENGTH}), got {args.window_stride}")
    name, _, k = args.valid_metric.partition("@")
    if not args.eval_only and (name.lower() not in METRICS or not k.isdigit() or int(k) not in args.topk):
        ap.error(f"--valid_metric: {args.valid_metric!r} is not one of {METRICS} at a k in --topk {args.topk} (e.g. MRR@10)")
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


def metrics_table(m, topk):
    lines = ["metric     " + "".join(f"{'@' + str(k):>10}" for k in topk)]
    for name in METRICS:
        lines.append(f"{name:<11}" + "".join(f"{m[f'{name}@{k}']:>10.4f}" for k in topk))
    return "\n".join(lines)


def batches(split, size, device="cpu", rank=0, world=1):
    """(start, item_seq, lengths, targets) of consecutive slices of `split`, in order, cut
    (data.Split.cut) one at a time; with world > 1 only slices rank, rank + world, ..."""
    for i in range(rank * size, len(split), world * size):
        yield (i,) + tuple(torch.as_tensor(a, device=device) for a in split.cut(np.arange(i, min(i + size, len(split)))))


class NonFiniteError(UserError):
    """A NaN or inf loss or score: the run stops (cli() prints one line, exit 1)."""


@torch.no_grad()
def evaluate(model, split, cfg, device):
    """Full-ranking metrics of `split`. With N processes each ranks whole batches, round-robin,
    as one process would, and the integer ranks are gathered: the same metrics, exactly."""
    model.eval()
    mine = {}  # batch start -> ranks of its users
    for i, seq, lengths, targets in batches(split, cfg["eval_batch_size"], device, distributed.rank(), distributed.world_size()):
        scores = model.full_scores(model(seq, lengths))
        bad = int((~torch.isfinite(scores[:, 1:])).sum())  # never rank a NaN, never report it as a metric
        mine[i] = f"{bad} item scores of the users {i}..{i + len(seq) - 1} are NaN or inf" if bad else \
            rank_of_target(scores, targets).cpu()
    ranks = distributed.gather(mine)
    errors = [r for r in ranks.values() if isinstance(r, str)]
    if errors:
        raise NonFiniteError(errors[0])
    return metrics_from_ranks(torch.cat([ranks[k] for k in sorted(ranks)]), cfg["topk"])


# -----------------------------------------------------------------------------
# Training

MODEL_OPTIONS = ("embedding_size", "hidden_size", "num_layers", "dropout_prob", "gamma", "loss_type", "freeze_kg",
                 "no_memory", "memory_impl", "pad_slot")


def build_model(cfg, ds):
    return KSR(ds.n_items, ds.item_kg, ds.relation_kg, **{k: cfg[k] for k in MODEL_OPTIONS})


def make_optimizer(model, cfg):
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg["learning_rate"])


@torch.no_grad()
def memory_cache(model, split, all_steps, device, log):
    """With a frozen KG a training sample's memory V depends on no trained weight: write it
    once per run (kernels.memory_write), not once per epoch; train_epoch hands it to
    KSR.forward. For memory_impl "sorted" only (the others run as they are); None when it
    does not apply or would exceed MEMORY_CACHE_BYTES."""
    if not model.frozen_kg or model.memory_impl != "sorted":
        return None
    R, K = model.relations.shape
    shape = (len(split),) + ((split.width,) if all_steps else ()) + (R, K)
    size = math.prod(shape) * 4 * distributed.local_world_size()  # every process on this machine holds one
    if size > MEMORY_CACHE_BYTES:
        log(f"memory cache: {size / 2 ** 30:.1f} GiB is over the {MEMORY_CACHE_BYTES / 2 ** 30:.0f} GiB budget; writing the memory every batch")
        return None
    t0 = time.time()
    V = torch.empty(shape, device=device)
    for i, seq, lengths, _ in batches(split, 1024, device):
        V[i:i + len(seq)] = kernels.memory_write(model.entity_embedding(seq), lengths, model.relations, all_steps)
    log(f"memory cache: wrote the memory of {len(split)} training samples once ({size / 2 ** 20:.0f} MiB, {time.time() - t0:.1f}s)")
    return V


def train_epoch(model, step, opt, split, cfg, device, gen, progress, V_cache=None):
    """One pass over `split` in a random order; returns the mean loss per target. `step` is
    distributed.wrap(model): with N processes each computes its contiguous slice of every
    batch, and the gradients add up to the step one process takes."""
    model.train()
    all_steps = cfg["train_mode"] == "sequence"  # windows: a target after every step
    rank, world = distributed.rank(), distributed.world_size()
    order = torch.randperm(len(split), generator=gen)  # the same on every rank: same seed, same draws
    n_batches = math.ceil(len(split) / cfg["train_batch_size"])
    n_batches = min(n_batches, cfg["max_steps"] or n_batches)
    total, count = 0.0, 0
    for b in range(n_batches):
        batch = order[b * cfg["train_batch_size"]:(b + 1) * cfg["train_batch_size"]].numpy()
        seq, lengths, targets = map(torch.as_tensor, split.cut(batch))  # targets (B,), or (B, L) with 0 = none
        negatives = sample_negatives(targets, model.n_items, gen) if cfg["loss_type"] == "BPR" else None  # whole batch
        part = np.array_split(np.arange(len(batch)), world)[rank]  # this process's rows (one process: all)
        seq, lengths = seq[part].to(device), lengths[part].to(device)
        V = V_cache[torch.as_tensor(batch[part], device=device)] if V_cache is not None else None
        mine, n_total = targets[part].to(device), int((targets > 0).sum())
        loss = step(seq, lengths, mine, negatives[part].to(device) if negatives is not None else None, V, all_steps)
        n_mine = int((mine > 0).sum())
        loss_sum = distributed.all_sum([loss.item() * n_mine], device)[0]  # the batch's, on every rank
        if not math.isfinite(loss_sum):  # stop before the step: the weights stay finite
            raise NonFiniteError(f"batch {b + 1}/{n_batches}: the training loss is {loss_sum / n_total}")
        opt.zero_grad(set_to_none=True)
        (loss * (n_mine * world / n_total)).backward()  # DDP averages over ranks: the batch mean's gradient
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
                             cfg["kg_embedding_size"], cfg["MAX_ITEM_LIST_LENGTH"], log=log)


def run(cfg, log=print):
    """Train with early stopping, test the best checkpoint; returns the results dict. Under
    torchrun every process runs this; only rank 0 logs and writes files."""
    t_start, main = time.time(), distributed.rank() == 0
    log = log if main else (lambda m: None)
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    device = torch.device(cfg["device"])
    out_dir = cfg["out_dir"] or os.path.join("runs", f"{cfg['dataset']}-{cfg['kg']}-{time.strftime('%Y%m%d-%H%M%S')}")
    ckpt_path, results_path = os.path.join(out_dir, "model.pt"), os.path.join(out_dir, "results.json")
    distributed.main_first(lambda: main and data.prepare_run_folder(out_dir, (ckpt_path, results_path), cfg["overwrite"]))
    ds = distributed.main_first(lambda: load_data(cfg, log))
    log(f"data: {ds.n_users} users, {ds.n_items} items, {len(ds.train)} train / {len(ds.valid)} valid / "
        f"{len(ds.test)} test samples, {len(ds.relation_tokens)} relations (kg={cfg['kg']})")
    model = build_model(cfg, ds).to(device)
    opt, step = make_optimizer(model, cfg), distributed.wrap(model, cfg["device"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    train_split, all_steps = ds.train, cfg["train_mode"] == "sequence"
    if all_steps:
        train_split = data.sequence_windows(ds.seqs, ds.train, cfg["MAX_ITEM_LIST_LENGTH"], cfg["window_stride"])
        log(f"sequence mode: {len(train_split)} windows of at most {cfg['MAX_ITEM_LIST_LENGTH']} steps, "
            f"{train_split.n_targets()} targets, stride {cfg['window_stride'] or cfg['MAX_ITEM_LIST_LENGTH']}")
    V_cache = memory_cache(model, train_split, all_steps, device, log)
    valid_key = cfg["valid_metric"].lower()
    progress = make_progress(main and sys.stderr.isatty())
    epoch_seconds, eval_seconds, valid_hist, losses = [], [], [], []  # epoch: training + valid evaluation
    best, best_epoch, bad = float("-inf"), -1, 0
    for epoch in range(cfg["epochs"]):
        t0 = time.time()
        try:
            loss, t1 = train_epoch(model, step, opt, train_split, cfg, device, gen, progress, V_cache), time.time()
            valid = evaluate(model, ds.valid, cfg, device)
        except NonFiniteError as e:
            kept = f"the best checkpoint so far (epoch {best_epoch}) is kept in {ckpt_path}" if best_epoch >= 0 else "no checkpoint"
            raise NonFiniteError(f"epoch {epoch}, {e}: training stopped; {kept}") from None
        epoch_seconds.append(time.time() - t0)
        eval_seconds.append(time.time() - t1)
        losses.append(loss)
        valid_hist.append(valid)
        improved = valid[valid_key] >= best  # RecBole's early_stopping: a tie also counts as better
        if improved:  # every rank keeps the best weights in memory (no shared disk needed); rank 0 saves them
            best, best_epoch, bad = valid[valid_key], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if main:
                data.save_atomic({"config": cfg, "fingerprint": ds.fingerprint, "stats": ds.stats, "epoch": epoch,
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
    t1, test = time.time(), evaluate(model, ds.test, cfg, device)
    results = {
        "config": cfg, "dataset": ds.stats, "train_samples": len(train_split), "epoch_seconds": epoch_seconds,
        "eval_seconds": eval_seconds, "test_seconds": time.time() - t1, "train_loss": losses,
        "valid": valid_hist, "best_epoch": best_epoch, "best_valid": valid_hist[best_epoch],
        "test": test, "total_seconds": time.time() - t_start, "checkpoint": ckpt_path, "world_size": distributed.world_size(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    if main:
        data.save_atomic(results, results_path)
    log(f"best valid {cfg['valid_metric']} {best:.4f} at epoch {best_epoch}; test metrics of that checkpoint:")
    log(metrics_table(test, cfg["topk"]))
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
        raise data.DataError(f"{path}: not a checkpoint written by train.py ({type(e).__name__}: {e})".splitlines()[0]) from None
    cfg.update(cfg_overrides)
    ds = load_data(cfg, log)
    if ds.fingerprint != ckpt["fingerprint"]:
        raise data.DataError(f"{path}: the checkpoint was trained on data with fingerprint {ckpt['fingerprint']}, "
                             f"but {cfg['data_path']}/{cfg['dataset']} (kg={cfg['kg']}) now has {ds.fingerprint}")
    model = build_model(cfg, ds).to(cfg["device"])
    state = {k.replace("dense.", "read_query.") if k.startswith("dense.") else k: v for k, v in ckpt["model"].items()}
    try:  # (read_query was called dense in earlier checkpoints)
        model.load_state_dict(state)
    except RuntimeError as e:
        raise data.DataError(f"{path}: its weights do not fit its own config ({str(e).splitlines()[-1].strip()})") from None
    return cfg, ds, model, ckpt["epoch"]


def eval_only(path, cfg_overrides, log=print):
    cfg, ds, model, epoch = load_checkpoint(path, cfg_overrides, log)
    out = {"valid": evaluate(model, ds.valid, cfg, cfg["device"]), "test": evaluate(model, ds.test, cfg, cfg["device"])}
    log(f"{path} (epoch {epoch}): test metrics")
    log(metrics_table(out["test"], cfg["topk"]))
    return out


# -----------------------------------------------------------------------------
# The command

EVAL_OPTIONS = ("device", "eval_batch_size", "data_path", "memory_impl", "topk")  # what --eval_only can change


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
        kernels.keep_freed_memory()  # process-wide, so here in the program, not in run()
        distributed.setup(args.device)  # under torchrun: join the other processes (distributed.py)
        try:
            run(vars(args))
        finally:
            distributed.shutdown()
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tune"]:
        import tune
        return tune.main(argv[1:])
    if argv[:1] == ["explain"]:
        import explain
        return explain.main(argv[1:])
    return cli(train_main, argv)


if __name__ == "__main__":
    sys.exit(main())
