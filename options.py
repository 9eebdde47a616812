"""The options and their defaults (the one place they are set), option types that refuse bad values,
and how every program here talks to its user: one line per error, and exit codes (2: a bad option,
1: bad data or a failed run, 130: Ctrl-C, 143: stopped by torchrun). It imports nothing of ours.
"""
import argparse
import math
import os
import re
import sys

# -----------------------------------------------------------------------------
# Defaults: RecBole's names and values (KSR.yaml, overall.yaml) where RecBole has the option.
CORE = dict(
    dataset="ml-100k", data_path="dataset", kg="attributes", keep_unlinked=False,  # kg: FOLLOWS
    embedding_size=64, kg_embedding_size=64, hidden_size=128, num_layers=1, dropout_prob=0.1,
    gamma=10.0, loss_type="CE", freeze_kg=True, no_memory=False, pad_slot=False,
    # sequence mode's batch and learning rate: the best valid MRR@10 of five batch sizes x learning rates over 5
    # seeds (docs/results.md); prefix mode's are RecBole's (FOLLOWS)
    train_mode="sequence", learning_rate=0.002, train_batch_size=32,
    window_stride=50,  # sequence mode: a window every MAX_ITEM_LIST_LENGTH steps, no overlap (FOLLOWS)
    eval_batch_size=4096, epochs=300, stopping_step=10, MAX_ITEM_LIST_LENGTH=50,
    topk=[10], valid_metric="MRR@10", seed=2020, device="cpu", kernels="auto", max_steps=0,
    out_dir=None, overwrite=False, eval_only=None, resume=None, quiet=False,
    # the KG vectors, when the dataset has none: TransE (transe.py), trained once and cached
    transe_epochs=60, transe_learning_rate=None, transe_seed=2020, transe_optimizer="auto",  # transe.resolve
)
# RecBole's settings beyond KSR.yaml (overall.yaml's names), each with a default that changes nothing here. A
# RecBole YAML config (--config_files) or the command line sets them; a parser takes them from
# extras/recbole_config.py only for a command line that names one (Parser.needs_recbole).
DATA_ARGS = dict(  # what data.load_dataset reads (its data_args, extras/recbole_data.py); one set enters the fingerprint
    split_ratio=None,  # None: RecBole's LS valid_and_test (leave-one-out); train,valid,test ratios: its RS split
    USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", TIME_FIELD="timestamp", HEAD_ENTITY_ID_FIELD="head_id",
    TAIL_ENTITY_ID_FIELD="tail_id", RELATION_ID_FIELD="relation_id", ENTITY_ID_FIELD="entity_id",
    load_col=None, unload_col=None,  # load_col None: RecBole's default, the .inter file alone (no .user/.item table)
    rm_dup_inter=None, val_interval=None, filter_inter_by_user_or_item=True,
    user_inter_num_interval=None, item_inter_num_interval=None, entity_kg_num_interval=None,
    relation_kg_num_interval=None, kg_reverse_r=False, benchmark_filename=None,
)
DEFAULTS = dict(
    CORE, learner="adam", weight_decay=0.0, clip_grad_norm=None, eval_step=1, show_progress=True,
    train_neg_sample_num=1,  # BPR: negatives per target (RecBole's train_neg_sample_args sample_num)
    train_neg_sample_distribution="uniform",  # how they are drawn: uniform, or popularity (the paper's)
    item_embedding="learned",  # x_i: learned, or bprmf (the authors' frozen BPR-MF vectors; ours, not RecBole's)
    valid_eval_mode="full", test_eval_mode="full", metric_decimal_place=None,  # None: exact
    metrics=["Recall", "MRR", "NDCG", "Hit", "Precision"], checkpoint_dir="runs", config_files=None, **DATA_ARGS)
KG_CHOICES = ("attributes", "files", "freebase")  # freebase: ml-100k's name for its files (RecBole's Freebase KG)
# A batch counts prefixes in RecBole's prefix mode, windows (~2,400 an epoch on ml-100k) in sequence mode
MODE_DEFAULTS = {"prefix": dict(train_batch_size=2048, learning_rate=0.001),  # RecBole's
                 "sequence": dict(train_batch_size=DEFAULTS["train_batch_size"], learning_rate=DEFAULTS["learning_rate"])}
# The defaults that follow another option when nothing set them (train.parse_args): option -> its value
FOLLOWS = {
    # ml-100k: the attribute KG (RecBole's Freebase links for it point at other films: extras/link_check.py);
    # any other dataset: its own .kg/.link files
    "kg": lambda a: "attributes" if a["dataset"] == "ml-100k" else "files",
    "train_batch_size": lambda a: MODE_DEFAULTS[a["train_mode"]]["train_batch_size"],
    "learning_rate": lambda a: MODE_DEFAULTS[a["train_mode"]]["learning_rate"],
    "window_stride": lambda a: a["MAX_ITEM_LIST_LENGTH"],
}


def transe_settings(cfg):
    """What TransE is trained with, from a run's options (data.load_dataset records it with the vectors)."""
    return {"epochs": cfg["transe_epochs"], "learning_rate": cfg["transe_learning_rate"], "seed": cfg["transe_seed"],
            "optimizer": cfg["transe_optimizer"]}


class UsageError(Exception):
    """A bad option or value: one line, exit 2 (cli)."""


class UserError(Exception):
    """Bad input or a failed run (DataError, train.NonFiniteError): one line, exit 1."""


class DataError(UserError):
    """Bad input, or a file that cannot be written: one line naming the file (and line) and what is wrong."""


class Stopped(BaseException):
    """torchrun stopped this process (its SIGTERM, distributed.setup): another process failed or the
    job was stopped. A BaseException, as KeyboardInterrupt: no `except Exception` swallows it."""


RECBOLE = tuple(k for k in DEFAULTS if k not in CORE)  # the DEFAULTS.update block's options


class Parser(argparse.ArgumentParser):
    recbole = ()  # the RecBole options (of RECBOLE) it takes: extras/recbole_config.add_options adds them

    def error(self, message):  # one line, exit 2 (cli() catches it)
        raise UsageError(f"{self.prog}: error: {message}")

    def needs_recbole(self, argv):  # argv names one of its RecBole options, or asks for --help
        return bool(self.recbole and (given_options(argv) & set(self.recbole) or {"-h", "--help"} & set(argv)))


def str2bool(v):
    if v.lower() not in ("true", "1", "yes", "false", "0", "no"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")
    return v.lower() in ("true", "1", "yes")


def number(cast, low=None, high=None, positive=False):
    """An argparse type: `cast`, finite (never NaN or inf), > 0 or in [low, high]."""
    def parse(v):
        x = cast(v)
        if positive and not (math.isfinite(x) and x > 0):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {v!r}")
        if not math.isfinite(x) or (low is not None and x < low) or (high is not None and x > high):
            raise argparse.ArgumentTypeError(f"must be a finite number in [{low}, {high}], got {v!r}")
        return x
    parse.__name__ = cast.__name__  # argparse names it in errors: "invalid int value"
    return parse


def positive(cast):
    return number(cast, positive=True)


def dataset_name(v):
    """--dataset: the name of a folder under --data_path ("name/" would look for name/name/name.inter)."""
    if not v or "/" in v or os.sep in v or v in (".", ".."):
        raise argparse.ArgumentTypeError(f"{v!r} is not a dataset's name (its files are <data_path>/NAME/NAME.inter, ...): "
                                         f"give it without a '/'; the folder above it is --data_path")
    return v


def topk_list(v):
    ks = [k.strip() for k in v.strip("[]").split(",") if k.strip()]
    if not ks or not all(k.isdigit() and int(k) > 0 for k in ks):
        raise argparse.ArgumentTypeError(f"expected a list of positive integers such as [10] or 5,10,20, got {v!r}")
    return [int(k) for k in ks]


def given_options(argv):
    """The names of the options on a command line (`--name value` or `--name=value`)."""
    return {a[2:].split("=")[0] for a in argv if a.startswith("--")}


def option_parser(prog, description, names=None):
    """An argparse parser with the training options (all, or those in `names`), defaults from DEFAULTS."""
    ap = Parser(prog=prog, description=description, allow_abbrev=False)
    pint, pfloat, d, md = positive(int), positive(float), DEFAULTS, MODE_DEFAULTS
    by_mode = lambda key: f"default {d[key]} (prefix mode: {md['prefix'][key]})"
    options = [
        ("dataset", dict(type=dataset_name)), ("data_path", {}),
        ("kg", dict(choices=KG_CHOICES, help="files (freebase): the dataset's .kg/.link files; attributes: a KG from "
                    "the .item file; default: attributes for ml-100k, files for any other dataset")),
        ("keep_unlinked", dict(type=str2bool, help="keep interactions whose item has no KG link (zero KG vector)")),
        *[(name, dict(type=pint)) for name in ("embedding_size", "kg_embedding_size", "hidden_size", "num_layers")],
        ("dropout_prob", dict(type=number(float))), ("gamma", dict(type=number(float))),
        ("loss_type", dict(choices=["CE", "BPR"])), ("freeze_kg", dict(type=str2bool)),
        ("no_memory", dict(action="store_true", help="plain GRU4Rec: no knowledge memory")),
        ("pad_slot", dict(type=str2bool, help="one more memory slot with a zero key, as RecBole's padding relation gives")),
        ("learning_rate", dict(type=pfloat, help=by_mode("learning_rate"))),
        ("train_batch_size", dict(type=pint, help=by_mode("train_batch_size"))),
        ("train_mode", dict(choices=["prefix", "sequence"], help="RecBole's prefix samples, or windows (README)")),
        ("window_stride", dict(type=pint, help="sequence mode: a window every this many steps (default: "
                               "MAX_ITEM_LIST_LENGTH, no overlap)")),
        *[(name, dict(type=pint)) for name in ("eval_batch_size", "epochs", "stopping_step", "MAX_ITEM_LIST_LENGTH")],
        ("topk", dict(type=topk_list)), ("valid_metric", {}),
        ("seed", dict(type=number(int, 0, 2 ** 32 - 1))), ("device", dict(choices=["cpu", "cuda"])),
        ("kernels", dict(choices=["auto", "reference", "torch", "cpp", "triton"], help="the code that computes the model "
                         "(kernels/__init__.py): auto, the fastest that works here; reference, ksr.py alone")),
        ("max_steps", dict(type=number(int, 0), help="stop each epoch after this many batches (0: all)")),
        ("out_dir", dict(help="run folder (default runs/<dataset>-<kg>-<time>)")),
        ("overwrite", dict(action="store_true", help="train into an --out_dir that holds a run (its files are replaced)")),
        ("eval_only", dict(metavar="CHECKPOINT", help="re-evaluate a saved model.pt")),
        ("resume", dict(metavar="RUN_DIR", help="go on with a stopped run from its last epoch (its last.pt)")),
        ("quiet", dict(action="store_true", help="no progress bars (off anyway where stderr is not a terminal)")),
        ("transe_epochs", dict(type=number(int, 0), help="TransE epochs, when the KG vectors are trained here")),
        ("transe_learning_rate", dict(type=pfloat, help="TransE's learning rate (default 0.01 dense, 0.005 lazy)")),
        ("transe_seed", dict(type=number(int, 0, 2 ** 32 - 1), help="TransE's seed: the vectors belong to the "
                             "dataset, not to a training run's --seed")),
        ("transe_optimizer", dict(choices=["auto", "lazy", "dense"], help="TransE's optimizer (transe.py): auto is "
                                  "dense up to 100,000 triples, lazy above")),
    ]
    for name, kw in options:
        if names is None or name in names:
            ap.add_argument("--" + name, **{"default": d[name], **kw})
    ap.recbole = tuple(n for n in RECBOLE if names is None or n in names)
    ap.set_defaults(**{n: d[n] for n in ap.recbole})  # the values a run has when no command line names them
    return ap


def cli(program, argv):
    """Run program(argv) as a command: one line for a bad option (exit 2), bad data, a failed run or no
    memory (exit 1), Ctrl-C (130), torchrun's SIGTERM (143); files are written whole (data.replacing),
    so a stopped run leaves nothing half-written. Under torchrun the job's own ends are said by rank 0."""
    job_line = lambda line: os.environ.get("RANK", "0") == "0" and print(line, file=sys.stderr)
    try:
        return program(argv)
    except UsageError as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if type(e).__name__ == "DistBackendError" or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and "gloo" in first):
            # under torchrun: another process died or stopped answering (gloo: "[.../pair.cc:537] Read error ...:
            # Connection reset by peer. This is typically caused by ...": the words between)
            why = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:160]
            job_line(f"error: the job lost a process: another process died or stopped answering ({why})")
            return 1
        if isinstance(e, RuntimeError) and "allocate" not in first and "out of memory" not in first:
            raise  # any other RuntimeError is a bug: keep its traceback
        print(f"error: out of memory ({first[:120]}); smaller sizes or batches need less", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        job_line("\ninterrupted: every file written so far is complete; nothing is half-written")
        return 130
    except Stopped:
        job_line("stopped by torchrun (another process of the job failed, or the job was stopped): every file "
                 "written so far is complete; nothing is half-written")
        return 143
