"""A run's saved state, read back: model.pt, the model and the data it was trained on (refused when the
data changed since), for `python train.py --eval_only runs/X/model.pt`, extras/explain.py and
extras/recommend.py; and last.pt, the state after the last epoch a run finished, for
`python train.py --resume runs/X`: the run goes on from there and ends as it would have, bit for bit
on one thread (the weights, the optimizer's moments, the early-stopping count and the random
generators' states all come back).
"""
import math
import os

import torch

import train
from extras.sampled_eval import run_candidates
from options import DEFAULTS, DataError, UsageError, given_options


def load_checkpoint(path, cfg_overrides, log=print):
    """(cfg, ds, model, epoch) of a saved model.pt, refusing data that changed since it was trained."""
    try:  # checked before any data is read: a truncated or foreign file can fail in any way
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        missing = {"config", "fingerprint", "epoch", "model"} - set(ckpt)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        cfg = {**DEFAULTS, "train_mode": "prefix", **ckpt["config"]}  # options newer than the checkpoint: as trained
        cfg["kernels"] = KERNELS_OF_OLD_OPTIONS.get((cfg.pop("memory_impl", None), cfg.pop("cpp_kernels", None)),
                                                    cfg["kernels"])
    except Exception as e:
        raise DataError(f"{path}: not a checkpoint written by train.py ({type(e).__name__}: {e})".splitlines()[0]) from None
    # train.py never saves a NaN (a non-finite loss stops the run): one here was edited or damaged, and would
    # give NaN scores that explain prints as numbers
    damage = [f"its config's {k} is {v}" for k, v in ckpt["config"].items() if isinstance(v, float) and not math.isfinite(v)]
    damage += [f"its weight {k} holds NaN or inf" for k, v in ckpt["model"].items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if damage:
        raise DataError(f"{path}: {damage[0]} (a damaged or hand-edited checkpoint; train it again)")
    cfg.update(cfg_overrides)
    ds = train.load_data(cfg, log)
    if ds.fingerprint != ckpt["fingerprint"]:
        raise DataError(f"{path}: the checkpoint was trained on data with fingerprint {ckpt['fingerprint']}, "
                             f"but {cfg['data_path']}/{cfg['dataset']} (kg={cfg['kg']}) now has {ds.fingerprint}")
    # frozen BPR-MF x_i (--item_embedding bprmf) are among the weights: built as learned ones, never pretrained again
    model = train.build_model({**cfg, "item_embedding": "learned"}, ds, log).to(cfg["device"])
    model.item_embedding.weight.requires_grad_(cfg["item_embedding"] == "learned")
    state = {k.replace("dense.", "read_query.") if k.startswith("dense.") else k: v for k, v in ckpt["model"].items()}
    try:  # a model.pt may hold read_query's weights under `dense.`: both load
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"{path}: its weights do not fit its own config ({str(e).splitlines()[-1].strip()})") from None
    return cfg, ds, model, ckpt["epoch"]


# the kernels a checkpoint's --memory_impl and --cpp_kernels (the options --kernels replaced) chose
KERNELS_OF_OLD_OPTIONS = {("reference", "auto"): "reference", ("reference", "off"): "reference", ("reference", None): "reference",
                          ("sorted", "off"): "torch", ("fused", "auto"): "triton", ("fused", "off"): "triton",
                          ("fused", None): "triton"}


def eval_only(path, cfg_overrides, log=print):
    cfg, ds, model, epoch = load_checkpoint(path, cfg_overrides, log)
    candidates = run_candidates(ds, cfg, log)  # the training run's candidates: the same seed draws the same items
    out = {name: evaluate(model, getattr(ds, name), cfg, cfg["device"], candidates[name]) for name in ("valid", "test")}
    log(f"{path} (epoch {epoch}): test metrics")
    log(train.metrics_table(out["test"], cfg["topk"]))
    return out


EVAL_OPTIONS = ("device", "eval_batch_size", "data_path", "kernels", "topk")  # what --eval_only can change


def eval_only_command(args, argv):
    """python train.py --eval_only CHECKPOINT [EVAL_OPTIONS]: one process, and no option it would ignore."""
    if train.launched():
        raise UsageError("train.py: error: --eval_only runs in one process: python train.py --eval_only ...")
    if not os.path.isfile(args.eval_only):
        raise UsageError(f"train.py: error: --eval_only: {args.eval_only}: file not found")
    if (other := sorted(given_options(argv) - {"eval_only", *EVAL_OPTIONS})):  # every option counts or is refused
        raise UsageError(f"train.py: error: --{other[0]}: --eval_only evaluates the checkpoint with its own settings "
                         f"(it takes {', '.join('--' + o for o in EVAL_OPTIONS)})")
    eval_only(args.eval_only, {k: getattr(args, k) for k in EVAL_OPTIONS})


def evaluate(model, split, cfg, device, candidates=None):
    """Metrics of `split` (--metrics at every --topk), full ranking or among `candidates`."""
    return train.metrics_from_ranks(train.rank_all(model, split, cfg, device, candidates), cfg["topk"], cfg["metrics"])


# what a resumed run may take with another value than it was started with: they change no result
RESUME_OPTIONS = ("resume", "eval_batch_size", "data_path", "show_progress")


def resume_command(args, argv):
    """python train.py --resume RUN_DIR: the stopped run's config, to go on with (None when it finished)."""
    if train.launched():
        raise UsageError("train.py: error: --resume runs in one process: python train.py --resume ...")
    last, results = os.path.join(args.resume, "last.pt"), os.path.join(args.resume, "results.json")
    if os.path.exists(results):
        print(f"{args.resume}: the run finished; its results are in {results}")
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
        cfg = dict(state["config"])
    except Exception as e:
        raise UsageError(f"train.py: error: --resume: {last}: not the state of a stopped run ({type(e).__name__}: "
                         f"{e})".splitlines()[0]) from None
    given = {k for k in given_options(argv) if k in cfg and getattr(args, k, cfg[k]) != cfg[k]}
    if (changed := sorted(given - set(RESUME_OPTIONS))):
        raise UsageError(f"train.py: error: --{changed[0]}: the run was started with {cfg[changed[0]]!r}; a resumed run "
                         f"keeps its options (but {', '.join('--' + o for o in RESUME_OPTIONS[1:])})")
    cfg.update({k: getattr(args, k) for k in given}, out_dir=args.resume, resume_state=last)
    print(f"{args.resume}: going on after epoch {state['epoch']} of {cfg['epochs']}")
    return cfg


def restore(path, model, opt, gen, cfg):
    """The state last.pt holds put back: (first epoch to run, history, best score, its epoch, epochs without
    a better one). An early stop that had come already stops again at once."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"][0])
    gen.set_state(state["rng"][1])
    stopped = state["since_best"] > cfg["stopping_step"]
    return (cfg["epochs"] if stopped else state["epoch"] + 1, state["h"], state["best"], state["best_epoch"],
            state["since_best"])
