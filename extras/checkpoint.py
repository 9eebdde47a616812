"""A saved model.pt, read back: the model and the data it was trained on (refused when the data
changed since), for `python train.py --eval_only runs/X/model.pt` and extras/explain.py.
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
    model = train.build_model(cfg, ds, log).to(cfg["device"])
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
    out = {name: train.evaluate(model, getattr(ds, name), cfg, cfg["device"], candidates[name]) for name in ("valid", "test")}
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
