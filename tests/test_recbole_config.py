"""A RecBole user's config (issue 21): YAML files, config_dict and the command line in RecBole's
precedence (recbole_config.py); RecBole's filters, RS split, benchmark files and sampled evaluation
(data.py) against counts worked out by hand on small datasets written here."""
import json
import os

import numpy as np
import pytest
import torch

import data
import options
import train
from extras import checkpoint, prepare, quickstart, recbole_data, sampled_eval
from conftest import TRANSE, write_tiny_dataset

QUIET = lambda m: None


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def parse(argv, config_dict=None):
    return train.parse_args(argv, config_dict=config_dict)


# -----------------------------------------------------------------------------
# Precedence: DEFAULTS < first file < later file < config_dict < command line

def test_precedence_on_every_kind_of_value(tmp_path):
    a = write(tmp_path / "a.yaml", """
epochs: 3                              # int
learning_rate: 1e-2                    # float (RecBole's loader: no dot needed)
freeze_kg: False                       # bool
learner: sgd                           # str
topk: [5, 10]                          # list
val_interval: {rating: "[3,inf)"}      # dict
clip_grad_norm: {max_norm: 5}          # RecBole's dict form
dropout_prob: 0.2
embedding_size: 32
""")
    b = write(tmp_path / "b.yaml", """
epochs: 4
learning_rate: 0.02
freeze_kg: True
learner: adagrad
topk: [10, 20]
val_interval: {rating: "[4,5]"}
clip_grad_norm: ~                      # None, over a's 5
hidden_size: 64
""")
    cd = {"epochs": 5, "learning_rate": "0.03", "freeze_kg": "false", "learner": "RMSprop", "topk": "[10]",
          "val_interval": {"rating": "[2,inf)"}}
    args = parse(["--config_files", a, b, "--epochs", "6", "--topk", "10,30"], config_dict=cd)
    assert args.epochs == 6 and args.topk == [10, 30]                     # the command line over all
    assert args.learning_rate == 0.03 and args.freeze_kg is False          # config_dict over the files
    assert args.learner == "rmsprop" and args.val_interval == {"rating": "[2,inf)"}
    assert args.clip_grad_norm is None and args.hidden_size == 64          # the later file over the earlier
    assert args.dropout_prob == 0.2 and args.embedding_size == 32          # the first file over DEFAULTS
    assert args.num_layers == options.DEFAULTS["num_layers"]
    src = args.config_sources
    assert (src["epochs"], src["topk"]) == ("command line", "command line")
    assert src["learning_rate"] == src["freeze_kg"] == src["learner"] == src["val_interval"] == "config_dict"
    assert src["clip_grad_norm"] == src["hidden_size"] == b and src["dropout_prob"] == src["embedding_size"] == a
    assert src["num_layers"] == "default"
    # without the dict: b over a, for every kind
    args = parse(["--config_files", a, b])
    assert (args.epochs, args.learning_rate, args.freeze_kg, args.learner, args.topk, args.val_interval) == \
        (4, 0.02, True, "adagrad", [10, 20], {"rating": "[4,5]"})
    args = parse(["--config_files", b, a])
    assert (args.epochs, args.learner, args.clip_grad_norm, args.topk) == (3, "sgd", 5.0, [5, 10])


def test_the_seed_example_is_the_default_experiment():
    """run_ksr(dataset='ml-100k', config_dict={'train_neg_sample_args': None}) runs what `train.py` runs."""
    got, default = vars(parse(["--dataset", "ml-100k"], config_dict={"train_neg_sample_args": None})), vars(parse([]))
    assert got.pop("config_sources")["train_neg_sample_num"] == "config_dict"
    default.pop("config_sources")
    assert got == default


def test_a_config_file_that_sets_an_option_the_command_line_sets_takes_the_command_line(tmp_path):
    f = write(tmp_path / "c.yaml", "learning_rate: 0.5\nloss_type: BPR\ntrain_neg_sample_args: {distribution: uniform, sample_num: 2}\n")
    args = parse(["--config_files", f, "--learning_rate", "0.004"])
    assert args.learning_rate == 0.004 and args.config_sources["learning_rate"] == "command line"
    assert args.loss_type == "BPR" and args.train_neg_sample_num == 2 and args.config_sources["loss_type"] == f


def test_recbole_translations(tmp_path):
    f = write(tmp_path / "e.yaml", """
eval_args: {split: {RS: [0.8, 0.1, 0.1]}, order: TO, mode: {valid: uni100}}
topk: 10
metrics: [NDCG, MAP]
valid_metric: MAP@10
user_inter_num_interval: "[0,inf)"     # RecBole's default: no filter, the same as ksr's None
use_gpu: False
model: KSR
state: INFO
worker: 0
""")
    args = parse(["--config_files", f])
    assert args.split_ratio == [0.8, 0.1, 0.1] and args.valid_eval_mode == args.test_eval_mode == "uni100"
    assert args.topk == [10] and args.metrics == ["NDCG", "MAP"] and args.user_inter_num_interval is None
    assert args.device == "cpu"
    assert parse(["--config_files", write(tmp_path / "m.yaml", "eval_args: {mode: {valid: uni50, test: full}}\n")]) \
        .valid_eval_mode == "uni50"


# -----------------------------------------------------------------------------
# Bad configs: one line naming the key and the file (or config_dict), exit 2, before any work

@pytest.mark.parametrize("text, needles", [
    ("epochs: 2\nno_such_key: 1\n", ["unknown key 'no_such_key'"]),
    ("learing_rate: 0.01\n", ["unknown key 'learing_rate'", "did you mean 'learning_rate'"]),
    ("epochs: ten\n", ["epochs", "invalid int value"]),
    ("freeze_kg: maybe\n", ["freeze_kg", "expected True or False"]),
    ("topk: [0]\n", ["topk"]),
    ("epochs: [1, 2\nseed: 3\n", ["line 2", "not valid YAML"]),  # the line where the list goes wrong
    ("eval_args: {split: {LS: valid_and_test}, order: RO}\n", ["eval_args", "order 'RO'"]),
    ("normalize_all: True\n", ["normalize_all", "exact timestamps"]),
    ("learner: sparse_adam\n", ["learner", "dense"]),
    ("train_neg_sample_args: {distribution: uniform, sample_num: 1}\n", ["train_neg_sample_args", "CE"]),
    ("eval_args: {mode: labeled}\n", ["mode", "labeled"]),
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys, text, needles):
    f = write(tmp_path / "bad.yaml", text)
    assert train.main(["--config_files", f, "--data_path", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f in err[0], err
    for needle in needles:
        assert needle in err[0], err


def test_bad_config_dict_names_config_dict():
    with pytest.raises(options.UsageError, match="config_dict: epochs: invalid int value"):
        parse([], config_dict={"epochs": "ten"})
    with pytest.raises(options.UsageError, match="config_dict: unknown key 'epoch'"):
        parse([], config_dict={"epoch": 2})


def test_keys_that_change_nothing_are_one_note_line(tmp_path, capsys):
    f = write(tmp_path / "n.yaml", "state: INFO\nworker: 4\nlog_wandb: False\nreproducibility: True\n")
    parse(["--config_files", f])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note:") and all(k in err[0] for k in ("state", "worker", "log_wandb"))


# -----------------------------------------------------------------------------
# RecBole's filters, in its order, against counts worked out by hand

def write_filter_dataset(root):
    """Users A..E, items 1..7 (the rows below, by hand):
        A: 1 2 3 4 7, and 1 again later (a duplicate)    B: 1 2 3 4 7    C: 1 2 3 4 5 7
        D: 5 6 2, and 1 with rating 1                     E: 6, and 3 with rating 1
    23 rows; rm_dup_inter first -> 22; rating [3,inf) -> 20; the 3-core (users and items):
    round 1 bans user E (1 item) and items 5, 6 (2 users each) -> A5 B5 C5 D1 (D keeps item 2): 16;
    round 2 bans user D -> 15; round 3 bans nothing. The KG: relation r1 has one triple (item 7's),
    relation_kg_num_interval [2,inf) drops it, so item 7 loses its link -> 12: A, B, C x items 1 2 3 4."""
    folder = os.path.join(root, "filt")
    os.makedirs(folder)
    rows, t = [], 0
    for u, items in (("A", "1 2 3 4 7"), ("B", "1 2 3 4 7"), ("C", "1 2 3 4 5 7"), ("D", "5 6 2"), ("E", "6")):
        for i in items.split():
            t += 1
            rows.append(f"{u}\t{i}\t4\t{t}")
    rows += ["A\t1\t5\t100", "D\t1\t1\t101", "E\t3\t1\t102"]
    write(os.path.join(folder, "filt.inter"), "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    write(os.path.join(folder, "filt.link"), "item_id:token\tentity_id:token\n" + "".join(f"{i}\te{i}\n" for i in range(1, 8)))
    write(os.path.join(folder, "filt.kg"), "head_id:token\trelation_id:token\ttail_id:token\n"
          + "".join(f"e{i}\tr0\tg{i % 2}\n" for i in range(1, 7)) + "e7\tr1\tg3\n")
    return root


FILTERS = dict(rm_dup_inter="first", val_interval={"rating": "[3,inf)"}, user_inter_num_interval="[3,inf)",
               item_inter_num_interval="[3,inf)", relation_kg_num_interval="[2,inf)")


def load(root, name, kg="files", **data_args):
    return data.load_dataset(name, root, kg, False, 8, 50, TRANSE, log=QUIET, data_args=data_args)


def test_each_filter_in_recboles_order(tmp_path):
    root = write_filter_dataset(str(tmp_path))
    ds = load(root, "filt", **FILTERS)
    assert ds.stats["filters"] == {"read": 23, "rm_dup_inter": 22, "val_interval rating": 20,
                                   "inter_num_interval (2 rounds)": 15, "KG link": 12}
    assert (ds.n_users, ds.n_items, len(ds.seqs.items), ds.stats["dropped_unlinked_interactions"]) == (3, 4, 12, 3)
    assert sorted(ds.user_tokens[1:]) == ["A", "B", "C"] and sorted(ds.item_tokens[1:]) == ["1", "2", "3", "4"]
    assert ds.relation_tokens == ["r0"] and len(ds.triples) == 6  # r1's triple filtered out
    test_item = {ds.user_tokens[u]: ds.item_tokens[ds.test.items[e]] for u, e in zip(ds.test.users, ds.test.ends)}
    assert test_item["A"] == "4"  # first: A's 1 stays at time 1
    last = load(root, "filt", **{**FILTERS, "rm_dup_inter": "last"})
    assert {last.user_tokens[u]: last.item_tokens[last.test.items[e]] for u, e in zip(last.test.users, last.test.ends)}["A"] == "1"
    # the defaults filter nothing and keep the fingerprint of a load without data_args; each filter changes it
    plain, default = load(root, "filt"), load(root, "filt", **{k: options.DEFAULTS[k] for k in options.DATA_ARGS})
    assert len(plain.seqs.items) == 23 and "filters" not in plain.stats and plain.fingerprint == default.fingerprint
    assert len({plain.fingerprint, ds.fingerprint, last.fingerprint}) == 3


def test_the_kcore_repeats_until_nothing_changes():
    """u4 has one item; without it i4 has one user; without that u3 has one item; then i3 one user:
    four rounds of the 2-core, and what is left is u1, u2 x i1, i2."""
    pairs = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 3), (3, 4), (4, 4)]
    users, items = (np.array(x, np.int64) for x in zip(*pairs))
    a = {**{k: options.DEFAULTS[k] for k in options.DATA_ARGS}, "user_inter_num_interval": "[2,inf)", "item_inter_num_interval": "[2,inf)"}
    rows, left = recbole_data.filter_interactions(users, items, np.arange(8.0), {}, {}, a, "x")
    assert rows.tolist() == [0, 1, 3, 4] and left["inter_num_interval (4 rounds)"] == 4
    # an upper bound too: users with at most 2 interactions (u1's 3 go), then items with 2+ users
    rows, _ = recbole_data.filter_interactions(users, items, np.arange(8.0), {}, {}, {**a, "user_inter_num_interval": "[1,2]"}, "x")
    assert [pairs[r] for r in rows] == [(3, 4), (4, 4)]


def test_value_intervals_and_token_lists():
    codes = np.array([0, 1, 0, 2])
    col = data.Tokens(codes, ["x", "y", "z"])
    assert recbole_data.value_mask(col, ["x", "z"], "f", "p").tolist() == [True, False, True, True]
    v = np.array([1.0, 3.0, 4.5, 5.0])
    assert recbole_data.value_mask(v, "(1,4.5];[5,5]", "f", "p").tolist() == [False, True, True, True]
    with pytest.raises(options.DataError, match="not a token column"):
        recbole_data.value_mask(v, ["1"], "f", "p")


def test_ratio_split_is_recboles(tmp_path):
    def recbole(tot, ratios):  # RecBole's Dataset._calcu_split_ids, as written there
        cnt = [int(ratios[i] * tot) for i in range(len(ratios))]
        cnt[0] = tot - sum(cnt[1:])
        for i in range(1, len(ratios)):
            if cnt[0] <= 1:
                break
            if 0 < ratios[-i] * tot < 1:
                cnt[-i] += 1
                cnt[0] -= 1
        return cnt
    for ratios in ([0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.7, 0.3, 0.0]):
        tots = np.arange(0, 60)
        v, t = recbole_data.ratio_split(tots, ratios)
        r = [x / sum(ratios) for x in ratios]
        assert [[a - b - c, b, c] for a, b, c in zip(tots.tolist(), v.tolist(), t.tolist())] == [recbole(n, r) for n in tots]
    # through build_sequences: a user of 21 items has 20 samples: 16 train, 2 valid, 2 test, in time order
    users, items = np.ones(21, np.int64), np.arange(1, 22)
    _, s = data.build_sequences(users, items, np.arange(21.0), 50, [0.8, 0.1, 0.1])
    assert (len(s["train"]), len(s["valid"]), len(s["test"])) == (16, 2, 2)
    assert items[s["valid"].ends].tolist() == [18, 19] and items[s["test"].ends].tolist() == [20, 21]


def test_benchmark_files_are_used_as_given(tmp_path):
    root = str(tmp_path)
    write_tiny_dataset(root, name="bm", n_users=3, n_items=6)
    folder = os.path.join(root, "bm")
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    write(os.path.join(folder, "bm.train.inter"), head + "u1\t1\t2\nu1\t1 2\t3\nu2\t4\t5\n")
    write(os.path.join(folder, "bm.valid.inter"), head + "u1\t1 2 3\t4\nu2\t4 5\t6\n")
    write(os.path.join(folder, "bm.test.inter"), head + "u1\t1 2 3 4\t5\nu2\t6 6\t1\n")
    ds = load(root, "bm", benchmark_filename=["train", "valid", "test"])
    tok = lambda ids: [ds.item_tokens[i] for i in ids if i]
    for split, want in ((ds.train, [("1", "2"), ("1 2", "3"), ("4", "5")]), (ds.valid, [("1 2 3", "4"), ("4 5", "6")]),
                        (ds.test, [("1 2 3 4", "5"), ("6 6", "1")])):
        seq, lengths, targets = split.cut(np.arange(len(split)))
        assert [(" ".join(tok(s)), ds.item_tokens[t]) for s, t in zip(seq, targets)] == want
    with pytest.raises(options.UsageError, match="train_mode prefix"):
        parse(["--benchmark_filename", "train,valid,test"])


# -----------------------------------------------------------------------------
# Sampled evaluation: uni100 ranks the target among exactly 100 items the user has not interacted with

def test_uni100_ranks_among_100_sampled_non_interacted_items(tmp_path):
    root = str(tmp_path)
    write_tiny_dataset(root, name="many", n_users=30, n_items=140, n_inter=(10, 20))
    cfg = vars(parse(["--dataset", "many", "--data_path", root, "--embedding_size", "8", "--hidden_size", "8",
                      "--kg_embedding_size", "8"]))
    ds = train.load_data(cfg, QUIET)
    neg = sampled_eval.eval_candidates(ds, ds.test, "uni100", torch.Generator().manual_seed(1))
    assert neg.shape == (len(ds.test), 100)
    for k, (u, e) in enumerate(zip(ds.test.users, ds.test.ends)):
        seen = set(ds.seqs[u].tolist())  # the test target is the user's last item: every item of the user
        assert len(set(neg[k].tolist())) == 100 and not seen & set(neg[k].tolist()) and 0 not in neg[k]
    again = sampled_eval.eval_candidates(ds, ds.test, "uni100", torch.Generator().manual_seed(1))
    other = sampled_eval.eval_candidates(ds, ds.test, "uni100", torch.Generator().manual_seed(2))
    assert (again == neg).all() and not (other == neg).all()
    pop = sampled_eval.eval_candidates(ds, ds.valid, "pop20", torch.Generator().manual_seed(1))
    assert pop.shape == (len(ds.valid), 20)
    # the rank among the target and its 100: brute force over the full scores
    torch.manual_seed(0)
    model = train.build_model(cfg, ds)
    ranks = train.rank_all(model, ds.test, cfg, "cpu", neg)
    with torch.no_grad():
        seq, lengths, targets = map(torch.as_tensor, ds.test.cut(np.arange(len(ds.test))))
        scores = model.full_scores(model(seq, lengths)[0])
    for k in range(len(ds.test)):
        s, t = scores[k], int(targets[k])
        want = 1 + sum(int(s[j] > s[t] or (s[j] == s[t] and j < t)) for j in neg[k].tolist())
        assert ranks[k].item() == want and 1 <= want <= 101
    with pytest.raises(options.DataError, match="fewer than 200 items"):
        sampled_eval.eval_candidates(ds, ds.test, "uni200", torch.Generator().manual_seed(1))


# -----------------------------------------------------------------------------
# The Python entry point, results.json's sources, --eval_only on a run from a config file

def test_run_ksr_records_the_config_and_eval_only_reproduces_it(tmp_path):
    root = write_filter_dataset(str(tmp_path))
    f = write(tmp_path / "k.yaml", f"""
data_path: {root}
kg: files
embedding_size: 8
hidden_size: 8
kg_embedding_size: 8
epochs: 2
eval_step: 2
rm_dup_inter: first
val_interval: {{rating: "[3,inf)"}}
user_inter_num_interval: "[3,inf)"
item_inter_num_interval: "[3,inf)"
relation_kg_num_interval: "[2,inf)"
metrics: [Recall, MRR, NDCG, Hit, Precision, MAP]
train_neg_sample_args: ~
""")
    out = str(tmp_path / "run")
    res = quickstart.run_ksr(dataset="filt", config_file_list=[f], config_dict={"out_dir": out, "learner": "adam",
                                                                           "weight_decay": 0.01}, log=QUIET)
    assert res["dataset"]["filters"]["KG link"] == 12 and res["dataset"]["users"] == 3
    assert res["config_sources"]["epochs"] == f and res["config_sources"]["weight_decay"] == "config_dict"
    assert res["config_sources"]["dataset"] == "command line" and res["config_sources"]["seed"] == "default"
    assert res["valid_epochs"] == [1] and len(res["train_loss"]) == 2  # validated every 2nd epoch
    assert res["test"]["map@10"] == res["test"]["mrr@10"]  # one relevant item: MAP is MRR
    with open(os.path.join(out, "results.json")) as fh:
        assert json.load(fh)["config_sources"] == res["config_sources"]
    again = checkpoint.eval_only(os.path.join(out, "model.pt"), {}, log=QUIET)
    assert again["test"] == res["test"]


def test_tune_and_data_py_take_config_files(tmp_path, capsys):
    from extras import tune
    f = write(tmp_path / "t.yaml", "learning_rate: 0.5\nmetrics: [NDCG, Hit]\nvalid_metric: NDCG@10\nepochs: 3\n")
    space = tune.read_params_file(write(tmp_path / "hyper.test", "learning_rate choice [0.01, 0.001]\n"), ["--config_files", f])
    assert space == [("learning_rate", "choice", [0.01, 0.001])]
    trial = parse(["--config_files", f, "--learning_rate", "0.001"])  # a trial: its searched value on the command line
    assert trial.learning_rate == 0.001 and trial.epochs == 3 and trial.metrics == ["NDCG", "Hit"]
    with pytest.raises(options.UsageError, match="valid_metric"):  # checked against the config's metrics
        tune.read_params_file(write(tmp_path / "h2.test", "valid_metric choice ['MRR@10']\n"), ["--config_files", f])
    # extras/prepare.py reads the data settings of a config and leaves the training ones to train.py
    root = write_filter_dataset(str(tmp_path))
    g = write(tmp_path / "d.yaml", "".join(f"{k}: {json.dumps(v)}\n" for k, v in FILTERS.items()) + "epochs: 7\n")
    assert prepare.main(["--config_files", g, "--dataset", "filt", "--data_path", root, "--kg", "files",
                      "--kg_embedding_size", "8", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["filters"]["KG link"] == 12 and stats["users"] == 3
