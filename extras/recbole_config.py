"""A RecBole user's config, unchanged: YAML files and a config_dict, read as RecBole reads them,
become train.py's options.

    python train.py --config_files ksr-ml100k.yaml [more.yaml ...] [options]
    extras.quickstart.run_ksr(dataset="ml-100k", config_file_list=["ksr-ml100k.yaml"], config_dict={...})

Precedence, as RecBole's Config: options.DEFAULTS < the first file < a later file < config_dict < the
command line (the values become the parser's defaults, so an option given on the command line
wins). A later value of a key replaces the earlier one whole, dicts too (RecBole's dict.update).

Every key a RecBole config holds is in one of the tables below:
  * train.py's options: the same name, the same meaning (KSR.yaml's keys, overall.yaml's training,
    evaluation and data keys, ksr's own options); CONVERT turns RecBole's other spellings of a value
    into the option's (topk: 10 is [10]).
  * TRANSLATE: a RecBole value that sets other options (eval_args -> split_ratio, valid_eval_mode,
    test_eval_mode; train_neg_sample_args -> train_neg_sample_num, _distribution; use_gpu -> device).
  * NO_EFFECT: accepted at any value, named in one note line (logging, workers, saving, GPU ids).
  * AT_VALUE: accepted at the values that change nothing here (named in the note), refused at any
    other with the reason (a RecBole feature ksr lacks, or one RecBole itself refuses for KSR).
Any other key (a typo, or a RecBole key none of these knows) stops the run in one line naming the
key and the file (or config_dict), exit 2, as an unknown option does. docs/recbole-differences.md
lists every key and what ksr does with it.
"""
import argparse
import ast
import difflib
import math
import os
import re
import sys

import yaml

from options import DEFAULTS, UsageError, given_options, number, positive, str2bool

NOT_IN_A_CONFIG = ("config_files", "eval_only")  # commands of train.py, not settings

# Accepted at any value: nothing here reads them (the reason is for the docs and the note)
NO_EFFECT = {
    "model": "the model is KSR (any other name is refused)",
    "state": "logging level", "reproducibility": "cudnn determinism; ksr's runs are deterministic for a seed",
    "worker": "data-loading workers", "log_wandb": "Weights & Biases logging", "wandb_project": "W&B project",
    "save_dataset": "saving the filtered dataset", "dataset_save_path": "saving the filtered dataset",
    "save_dataloaders": "saving the dataloaders", "dataloaders_save_path": "saving the dataloaders",
    "loss_decimal_place": "decimals of the printed loss", "require_pow": "EmbLoss, which KSR does not use",
    "gpu_id": "which GPU: CUDA_VISIBLE_DEVICES chooses it", "valid_metric_bigger": "RecBole overwrites it from "
    "valid_metric (True for every ranking metric)", "RATING_FIELD": "labels, which a CE/BPR KSR does not read",
    "LABEL_FIELD": "labels of point-wise models", "NEG_PREFIX": "the name of the negative item column",
    "ITEM_LIST_LENGTH_FIELD": "an internal column name", "POSITION_FIELD": "an internal column name",
    "unused_col": "columns loaded but not used", "threshold": "labels of point-wise models",
    "neg_sampling": "deprecated in RecBole (ignored there too)", "training_neg_sample_num": "deprecated in RecBole "
    "(ignored there too)", "nproc": "RecBole's multi-GPU launcher: use torchrun", "world_size": "RecBole's launcher",
    "ip": "RecBole's launcher", "port": "RecBole's launcher", "offset": "RecBole's launcher",
    "eval_type": "derived by RecBole from metrics", "MODEL_TYPE": "derived by RecBole", "kg_url": "download address",
}

# Accepted at these values (they change nothing), refused at any other: (values, why another is refused)
AT_VALUE = {
    "repeatable": ((True,), "RecBole requires True for sequential models"),
    "shuffle": ((True,), "ksr shuffles the training samples every epoch"),
    "enable_amp": ((False,), "mixed precision is not implemented"),
    "enable_scaler": ((False,), "mixed precision is not implemented"),
    "transform": ((None,), "RecBole's batch transforms are not implemented"),
    "normalize_all": ((None, False), "ksr keeps exact timestamps (docs/recbole-differences.md); RecBole's "
                      "float32 normalisation reorders some users' items"),
    "normalize_field": ((None, []), "ksr normalises no field"),
    "discretization": ((None,), "ksr discretises no field"),
    "numerical_features": ((None, []), "KSR embeds no numerical feature"),
    "alias_of_user_id": ((None, []), "ksr reads user ids from USER_ID_FIELD alone"),
    "alias_of_item_id": ((None, []), "ksr reads item ids from ITEM_ID_FIELD alone"),
    "seq_len": ((None, {}), "ksr does not cut sequence fields"),
    "field_separator": (("\t",), "ksr reads RecBole's tab-separated files"),
    "seq_separator": ((" ",), "ksr splits sequence fields on spaces"),
    "encoding": (("utf-8", "UTF-8"), "ksr reads UTF-8 files"),
    "LIST_SUFFIX": (("_list",), "benchmark files' item list column is <ITEM_ID_FIELD>_list"),
    # The KG vector files ksr reads (data.kg_vectors): RecBole's KSR page names them so
    "additional_feat_suffix": ((None, ["ent_feature", "rel_feature"], ["ent_feature"], ["rel_feature"]),
                               "ksr reads <dataset>.ent_feature and <dataset>.rel_feature"),
    "alias_of_entity_id": ((None, ["ent_id"]), "ksr reads entity ids from the ent_id column"),
    "alias_of_relation_id": ((None, ["rel_id"]), "ksr reads relation ids from the rel_id column"),
    "preload_weight": ((None, {"ent_id": "ent_vec", "rel_id": "rel_vec"}, {"ent_id": "ent_vec"}, {"rel_id": "rel_vec"}),
                       "ksr reads the vectors from ent_id/ent_vec and rel_id/rel_vec"),
}
SINGLE_VALUE_LISTS = ("additional_feat_suffix", "alias_of_entity_id", "alias_of_relation_id", "topk", "metrics")
EVERY_FILE = {suffix: "*" for suffix in ("inter", "user", "item", "kg", "link")}  # RecBole's load_col None
NO_FILTER = "[0,inf)"  # RecBole's default interval: keeps everything, the same as ksr's None

_said = set()  # note lines already printed by this process (tune parses the same config many times)


# -----------------------------------------------------------------------------
# Reading: YAML files and a config_dict, as RecBole's Config reads them

class _Loader(yaml.SafeLoader):
    """YAML as RecBole reads it (Config._build_yaml_loader): `~` is None, and 1e-3 is a float (PyYAML
    alone reads a float without a dot as a string)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def read_yaml(path):
    """One config file as a dict; a file that is not YAML is one line naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"--config_files: {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config_files: {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        cfg = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise UsageError(f"{path}: {where}not valid YAML ({what})") from None
    if cfg is None:  # an empty file sets nothing
        return {}
    if not isinstance(cfg, dict) or not all(isinstance(k, str) for k in cfg):
        raise UsageError(f"{path}: expected `key: value` lines (a YAML mapping), got a {type(cfg).__name__}")
    return cfg


def read_config_dict(config_dict):
    """RecBole's Config._convert_config_dict: a string value that reads as a Python literal is that
    value ("[10, 20]", "None", "0.01"), "true"/"false" are booleans, any other string stays a string
    (RecBole evals them; a literal is all a config value can be)."""
    if not isinstance(config_dict, dict):
        raise UsageError(f"config_dict: expected a dict, got a {type(config_dict).__name__}")
    out = {}
    for key, v in config_dict.items():
        if isinstance(v, str):
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                v = {"true": True, "false": False}.get(v.lower(), v)
        out[key] = v
    return out


# -----------------------------------------------------------------------------
# Translating: one RecBole key and value -> train.py options and values

def translate(key, value, where, notes):
    """{option: value} for one RecBole key; UsageError for a key or value ksr cannot honour."""
    bad = lambda why: UsageError(f"{where}: {key}: {why}")
    if key in SINGLE_VALUE_LISTS and isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]  # RecBole takes topk: 10, metrics: NDCG, additional_feat_suffix: ent
    if key == "model":
        if str(value) != "KSR":
            raise bad(f"{value!r}: this is KSR's implementation (model: KSR)")
    if key == "learner":
        if str(value).lower() == "sparse_adam":
            raise bad("sparse_adam needs sparse gradients and KSR's embeddings give dense ones (RecBole's "
                      "SparseAdam fails at KSR's first step too); use adam")
        return {"learner": str(value).lower()}  # RecBole lower-cases it
    if key in NO_EFFECT:
        notes.append(key)
        return {}
    if key in AT_VALUE:
        allowed, why = AT_VALUE[key]
        if value not in allowed:
            raise bad(f"{value!r} is not supported ({why}); accepted: {', '.join(repr(a) for a in allowed)}")
        notes.append(key)
        return {}
    if key in TRANSLATE:
        return TRANSLATE[key](value, bad)
    if key in NOT_IN_A_CONFIG:
        raise bad(f"a command-line option of train.py, not a setting a config file can hold")
    if key in DEFAULTS:
        return {key: CONVERT.get(key, lambda v, bad: v)(value, bad)}
    close = difflib.get_close_matches(key, list(DEFAULTS) + list(TRANSLATE) + list(NO_EFFECT) + list(AT_VALUE), 1)
    raise UsageError(f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else
                     " (not a RecBole setting ksr knows: docs/recbole-differences.md lists them)"))


def _eval_args(value, bad):
    """eval_args {split, order, group_by, mode}: a key left out takes KSR's (sequential) default in RecBole:
    split LS valid_and_test, order TO, group_by user, mode full."""
    if not isinstance(value, dict):
        raise bad(f"expected a dict with split, order, group_by, mode, got {value!r}")
    unknown = set(value) - {"split", "order", "group_by", "mode"}
    if unknown:
        raise bad(f"unknown part {sorted(unknown)[0]!r} (eval_args has split, order, group_by, mode)")
    out = {"split_ratio": None}
    split = value.get("split", {"LS": "valid_and_test"})
    if not isinstance(split, dict) or len(split) != 1:
        raise bad(f"split: expected one of {{LS: valid_and_test}} or {{RS: [0.8, 0.1, 0.1]}}, got {split!r}")
    (how, arg), = split.items()
    if how == "LS" and arg != "valid_and_test":
        raise bad(f"split LS {arg!r}: early stopping needs a valid set and the report a test set (valid_and_test)")
    if how == "RS":
        if not isinstance(arg, list) or len(arg) != 3:
            raise bad(f"split RS: expected three ratios [train, valid, test], got {arg!r}")
        out["split_ratio"] = arg
    elif how != "LS":
        raise bad(f"split {how!r} is not supported (LS valid_and_test or RS [train, valid, test])")
    if value.get("order", "TO") != "TO":
        raise bad(f"order {value['order']!r}: a sequential model's samples are ordered by time (RecBole refuses "
                  f"another order for KSR too: 'The ordering args for sequential recommendation has to be TO')")
    if str(value.get("group_by", "user")).lower() != "user":
        raise bad(f"group_by {value['group_by']!r}: ksr splits each user's samples (group_by: user)")
    mode = value.get("mode", "full")
    if isinstance(mode, str):
        mode = {"valid": mode, "test": mode}
    if not isinstance(mode, dict) or set(mode) - {"valid", "test"}:
        raise bad(f"mode: expected full, uniN, popN or {{valid: ..., test: ...}}, got {mode!r}")
    default = mode.get("valid", mode.get("test", "full"))  # RecBole fills the phase left out so
    out["valid_eval_mode"], out["test_eval_mode"] = mode.get("valid", default), mode.get("test", default)
    for m in (out["valid_eval_mode"], out["test_eval_mode"]):
        if not re.fullmatch(r"full|(uni|pop)[1-9][0-9]*", str(m)):
            raise bad(f"mode {m!r}: ksr ranks full, uniN or popN (labeled is for value metrics, which KSR has none of)")
    return out


def _train_neg_sample_args(value, bad):
    """None: no negatives (CE); {distribution: uniform|popularity, sample_num: N}: BPR with N negatives per target."""
    if value is None or value == "None":
        return {"train_neg_sample_num": 1}
    if not isinstance(value, dict):
        raise bad(f"expected None or a dict such as {{distribution: uniform, sample_num: 1}}, got {value!r}")
    unknown = set(value) - {"distribution", "sample_num", "alpha", "dynamic", "candidate_num"}
    if unknown:
        raise bad(f"unknown part {sorted(unknown)[0]!r}")
    distribution = value.get("distribution", "uniform")
    if distribution in (None, "None", "none"):
        return {"train_neg_sample_num": 1}
    if distribution not in ("uniform", "popularity"):
        raise bad(f"distribution {distribution!r}: ksr draws training negatives uniform or by popularity")
    if value.get("dynamic", False):
        raise bad("dynamic negative sampling is not implemented (dynamic: False)")
    return {"train_neg_sample_num": value.get("sample_num", 1), "train_neg_sample_distribution": distribution}


def _use_gpu(value, bad):
    if not isinstance(value, bool):
        raise bad(f"expected True or False, got {value!r}")
    import torch  # here: RecBole's rule needs to know whether CUDA is there (it falls back to the CPU)
    return {"device": "cuda" if value and torch.cuda.is_available() else "cpu"}


def _clip_grad_norm(value, bad):
    """RecBole passes a dict to clip_grad_norm_ ({max_norm: 5, norm_type: 2}); ksr's option is max_norm."""
    if isinstance(value, dict):
        if set(value) - {"max_norm", "norm_type"} or value.get("norm_type", 2) not in (2, 2.0) or "max_norm" not in value:
            raise bad(f"expected {{max_norm: X}} (norm_type 2, the only one ksr clips with), got {value!r}")
        return value["max_norm"]
    return value


def _no_filter(value, bad):
    return None if isinstance(value, str) and value.replace(" ", "") == NO_FILTER else value


TRANSLATE = {"eval_args": _eval_args, "train_neg_sample_args": _train_neg_sample_args, "use_gpu": _use_gpu}
CONVERT = {"clip_grad_norm": _clip_grad_norm, "load_col": lambda v, bad: EVERY_FILE if v is None else v,
           **{k: _no_filter for k in ("user_inter_num_interval", "item_inter_num_interval", "entity_kg_num_interval",
                                      "relation_kg_num_interval")}}


# -----------------------------------------------------------------------------
# Checking each value with train.py's own parser, and setting the parser's defaults

def _cli_text(v):
    """A value as the command line spells it, for the option's own type to check."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return repr(v) if isinstance(v, dict) else str(v)


def check(ap, option, value, where, key):
    """`value` as train.py's option `option` would take it, checked by the option's own type and choices."""
    bad = lambda why: UsageError(f"{where}: {key}: {why}")
    action = ap._option_string_actions.get("--" + option)  # argparse keeps no public table of its options
    if action is None:  # an option of another program (tune's parser has only some)
        raise bad(f"not an option of {ap.prog}")
    if value is None:
        if DEFAULTS.get(option, 0) is not None:
            raise bad(f"must be set (None is not a value of --{option})")
        return None
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise bad(f"expected True or False, got {value!r}")
        return value
    try:
        parsed = action.type(_cli_text(value)) if action.type else _cli_text(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        name = getattr(action.type, "__name__", "")
        raise bad(f"invalid {name} value: {value!r}" if not isinstance(e, argparse.ArgumentTypeError) else str(e)) from None
    if action.choices is not None and parsed not in action.choices:
        raise bad(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return parsed


def apply(ap, argv, config_files=None, config_dict=None, other_programs=False):
    """Set `ap`'s defaults from RecBole config files and a config_dict, RecBole's precedence (files in
    order, then the dict; parsing argv afterwards puts the command line on top). Prints one note line
    naming the keys that change nothing here. Returns {option: where its value comes from}: "default",
    a file's path, "config_dict" or "command line", for every option. other_programs: a key for an
    option `ap` lacks is another program's (data.py reads the data settings, train.py the rest)."""
    add_options(ap)
    layers = [(path, read_yaml(path)) for path in config_files or []]
    if config_dict:
        layers.append(("config_dict", read_config_dict(config_dict)))
    values, sources, notes, neg_args = {}, {}, [], None
    for where, cfg in layers:
        for key, value in cfg.items():
            said = []
            for option, v in translate(key, value, where, said).items():
                if other_programs and "--" + option not in ap._option_string_actions:
                    continue
                values[option], sources[option] = check(ap, option, v, where, key), where
            notes += [f"{k} ({where})" for k in said]
            if key == "train_neg_sample_args":
                neg_args = (where, value)
    given = given_options(argv)
    loss = values.get("loss_type", DEFAULTS["loss_type"])
    if neg_args and "loss_type" not in given:  # RecBole's rule: CE takes no training negatives, BPR needs them
        where, v = neg_args
        sampled = isinstance(v, dict) and v.get("distribution", "uniform") not in (None, "None", "none")
        if loss == "CE" and sampled:
            raise UsageError(f"{where}: train_neg_sample_args: must be None (~) with loss_type CE (RecBole refuses "
                             f"it too); BPR takes {{distribution: uniform, sample_num: N}}")
        if loss == "BPR" and not sampled:
            raise UsageError(f"{where}: train_neg_sample_args: loss_type BPR needs negatives: "
                             f"{{distribution: uniform, sample_num: 1}}")
    ap.set_defaults(**values)
    line = "note: these RecBole keys change nothing here: " + ", ".join(notes)
    if notes and line not in _said and os.environ.get("RANK", "0") == "0":
        _said.add(line)
        print(line, file=sys.stderr)
    return {name: "command line" if name in given else sources.get(name, "default") for name in DEFAULTS}

BENCHMARK_IGNORES = ("split_ratio", "rm_dup_inter", "val_interval", "user_inter_num_interval", "item_inter_num_interval",
                     "entity_kg_num_interval", "relation_kg_num_interval")


def check_args(ap, args):
    """The RecBole settings that cannot go together (train.parse_args): one line, exit 2."""
    if args.loss_type == "CE" and args.train_neg_sample_distribution != "uniform":
        ap.error("--train_neg_sample_distribution: CE scores every item and samples no negatives; it needs --loss_type BPR")
    if args.benchmark_filename:
        if args.train_mode == "sequence":
            ap.error("--benchmark_filename: its files hold samples, not users' sequences, so they train in RecBole's "
                     "prefix mode: add --train_mode prefix (train_mode: prefix)")
        if (unused := [k for k in BENCHMARK_IGNORES if getattr(args, k) != DEFAULTS[k]]):
            ap.error(f"--{unused[0]}: RecBole neither filters nor splits benchmark files (--benchmark_filename): "
                     f"it would change nothing")


# -----------------------------------------------------------------------------
# RecBole's options (options.RECBOLE: the DEFAULTS.update block): their types and help. A parser
# (options.Parser) adds them from here when a command line names one, or asks for --help.

def add_options(ap):
    """Add to `ap` the RecBole options it takes (ap.recbole) and does not have yet; their defaults are
    the ones ap holds (options.option_parser set them, a config may have changed them)."""
    for name, kw in recbole_options():
        if name in ap.recbole and "--" + name not in ap._option_string_actions:
            ap.add_argument("--" + name, **kw)


METRIC_NAMES = ("Recall", "MRR", "NDCG", "Hit", "Precision", "MAP")  # RecBole's spelling


LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop")  # RecBole's, as trainer._build_optimizer maps them


def parse_intervals(text):
    """RecBole's intervals (Dataset._parse_intervals_str): "[5,inf)", "(0,1]", a union "(0,1];[3,4)", as
    [(left bracket, low, high, right bracket)]. RecBole warns about an illegal one and skips it; here it is a
    ValueError (an option refused in one line)."""
    out = []
    for part in str(text).split(";"):
        part = part.strip()
        ends = part[1:-1].split(",")
        if len(part) < 2 or part[0] not in "([" or part[-1] not in ")]" or len(ends) != 2:
            raise ValueError(f"{part!r} is not an interval such as [5,inf), (0,1] or [1,3];[5,inf)")
        low, high = float(ends[0]), float(ends[1])  # inf, -inf as RecBole's float() reads them
        if math.isnan(low) or math.isnan(high) or low > high:
            raise ValueError(f"{part!r} is not an interval: its ends must be numbers, low <= high")
        out.append((part[0], low, high, part[-1]))
    return out


def interval(v):
    try:
        parse_intervals(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return v


def literal(v):
    """A Python literal (RecBole's command line evals its values: --load_col="{'inter': ['user_id']}")."""
    if not isinstance(v, str):
        return v
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"expected a Python literal such as {{'inter': ['user_id', 'item_id']}}, got {v!r}") from None


def column_map(v):
    """load_col / unload_col: {file suffix: [column, ...] or '*'}."""
    d = literal(v)
    if not isinstance(d, dict) or not all(isinstance(k, str) and (c == "*" or isinstance(c, list) and
                                                                 all(isinstance(x, str) for x in c)) for k, c in d.items()):
        raise argparse.ArgumentTypeError(f"expected {{suffix: [column, ...] or '*'}} such as {{'inter': ['user_id', 'item_id']}}, got {v!r}")
    return d


def value_intervals(v):
    """val_interval: {field: interval (a float field) or [token, ...] (a token field)}."""
    d = literal(v)
    if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
        raise argparse.ArgumentTypeError(f"expected {{field: interval}} such as {{'rating': '[3,inf)'}}, got {v!r}")
    for field, iv in d.items():
        if isinstance(iv, list):
            continue
        try:
            parse_intervals(iv)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{field}: {e}") from None
    return d


def name_list(n=None):
    def parse(v):
        names = [x.strip() for x in (v if isinstance(v, list) else v.strip("[]").split(",")) if str(x).strip()]
        if not names or (n and len(names) != n):
            raise argparse.ArgumentTypeError(f"expected {n or 'one or more'} comma-separated names, got {v!r}")
        return [str(x).strip("'\" ") for x in names]
    return parse


def split_ratio(v):
    try:
        r = [float(x) for x in v.strip("[]").split(",")]
    except ValueError:
        r = []
    if len(r) != 3 or not all(math.isfinite(x) and x >= 0 for x in r) or not r[0] > 0:
        raise argparse.ArgumentTypeError(f"expected train,valid,test ratios such as 0.8,0.1,0.1 (train > 0), got {v!r}")
    return r


def eval_mode(v):
    if not (v == "full" or re.fullmatch(r"(uni|pop)[1-9][0-9]*", v)):
        raise argparse.ArgumentTypeError(f"expected full, uniN or popN (e.g. uni100), got {v!r}")
    return v


def metric_list(v):
    names = {m.lower(): m for m in METRIC_NAMES}
    got = name_list()(v)
    bad = [m for m in got if m.lower() not in names]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown metric {bad[0]!r} (ksr computes {', '.join(METRIC_NAMES)})")
    return [names[m.lower()] for m in got]


def recbole_options():
    """The options of RecBole's settings (the DEFAULTS.update block): (name, argparse keywords)."""
    pint = positive(int)
    return [
        ("config_files", dict(nargs="+", metavar="FILE.yaml", help="RecBole YAML config files: later files over "
                              "earlier ones, the command line over all (recbole_config.py)")),
        ("learner", dict(choices=LEARNERS)), ("weight_decay", dict(type=number(float, 0))),
        ("clip_grad_norm", dict(type=positive(float), help="clip the gradient's 2-norm to this (RecBole's max_norm)")),
        ("eval_step", dict(type=pint, help="validate every this many epochs")), ("show_progress", dict(type=str2bool)),
        ("train_neg_sample_num", dict(type=pint, help="BPR: negatives per target")),
        ("train_neg_sample_distribution", dict(choices=["uniform", "popularity"], help="BPR: negatives drawn uniformly, or "
                                               "by training count (the paper's; extras/paper.py)")),
        ("item_embedding", dict(choices=["learned", "bprmf"], help="the item embeddings x_i: learned, or BPR-MF vectors "
                                "pretrained on the training split and frozen (the paper's; extras/bprmf.py)")),
        ("split_ratio", dict(type=split_ratio, help="RecBole's RS split of each user's samples in time order, e.g. "
                             "0.8,0.1,0.1 (default: leave-one-out, RecBole's LS valid_and_test)")),
        *[(name, dict(type=eval_mode, help="full ranking, or rank among N sampled items (uniN uniform, popN by "
                      "popularity)")) for name in ("valid_eval_mode", "test_eval_mode")],
        ("metrics", dict(type=metric_list)), ("metric_decimal_place", dict(type=number(int, 0, 16), help="compare "
                         "valid metrics rounded to this many decimals, as RecBole (default: exact)")),
        ("checkpoint_dir", dict(help="the folder of run folders (default runs)")),
        *[(name, {}) for name in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "HEAD_ENTITY_ID_FIELD",
                                  "TAIL_ENTITY_ID_FIELD", "RELATION_ID_FIELD", "ENTITY_ID_FIELD")],
        ("load_col", dict(type=column_map)), ("unload_col", dict(type=column_map)),
        ("rm_dup_inter", dict(choices=["first", "last"])), ("val_interval", dict(type=value_intervals)),
        ("filter_inter_by_user_or_item", dict(type=str2bool)),
        *[(name, dict(type=interval)) for name in ("user_inter_num_interval", "item_inter_num_interval",
                                                    "entity_kg_num_interval", "relation_kg_num_interval")],
        ("kg_reverse_r", dict(type=str2bool)),
        ("benchmark_filename", dict(type=name_list(3), help="pre-split files <dataset>.<name>.inter, e.g. "
                                    "train,valid,test")),
    ]

