"""tune.py: the hyper.test parser, grid and random search, resume, selection on valid."""
import json
import os

import pytest

import train
from extras import tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text, name="hyper.test"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_shipped_hyper_test_parses_with_literal_types():
    space = tune.read_params_file(os.path.join(ROOT, "extras", "hyper.test"))
    kinds = {name: (kind, values) for name, kind, values in space}
    assert kinds["learning_rate"] == ("choice", [0.01, 0.005, 0.001, 0.0005, 0.0001])
    assert kinds["num_layers"][1] == [1, 2, 3] and all(type(v) is int for v in kinds["num_layers"][1])
    assert kinds["freeze_kg"][1] == [True, False] and all(type(v) is bool for v in kinds["freeze_kg"][1])
    n, settings = tune.grid_settings(space)
    assert n == len(list(settings)) == 5 * 6 * 3 * 1 * 2


def test_every_kind_and_separator(tmp_path):
    path = write(tmp_path, "# a comment\n\nloss_type choice ['CE', 'BPR']\ndropout_prob uniform 0.1,0.4\n"
                           "learning_rate loguniform -9.2 -4.6\nhidden_size quniform 64 256 64\ntopk choice [[5, 10]]\n")
    space = tune.read_params_file(path)
    assert [s[:2] for s in space] == [("loss_type", "choice"), ("dropout_prob", "uniform"), ("learning_rate", "loguniform"),
                                      ("hidden_size", "quniform"), ("topk", "choice")]
    for s in tune.random_settings(space, 20, seed=1):
        assert s["loss_type"] in ("CE", "BPR") and 0.1 <= s["dropout_prob"] <= 0.4
        assert 1.0e-4 <= s["learning_rate"] <= 1.01e-2  # exp(-9.2) .. exp(-4.6): bounds are natural logs
        assert s["hidden_size"] in (64, 128, 192, 256) and type(s["hidden_size"]) is int
        args = train.parse_args([a for k, v in s.items() for a in ("--" + k, tune._cli_value(v))])  # values a run accepts
        assert args.topk == [5, 10] and args.hidden_size == s["hidden_size"]


@pytest.mark.parametrize("line, needle", [
    ("learning_rate choice", "expected `name kind values`"),
    ("learning_rate choice [0.01", "not a Python list literal"),
    ("learning_rate choice 0.01", "non-empty list"),
    ("learning_rate choice []", "non-empty list"),
    ("learning_rate uniform 0.1", "low high"),
    ("learning_rate uniform 0.5 0.1", "low <= high"),
    ("learning_rate uniform a b", "bounds must be numbers"),
    ("hidden_size quniform 64 256 0", "q > 0"),
    ("no_such_option choice [1]", "unknown parameter 'no_such_option'"),
    ("out_dir choice ['x']", "unknown parameter 'out_dir'"),
    ("learning_rate normal 0 1", "unknown search kind 'normal'"),
    ("dropout_prob choice [0.1, 1.5]", "dropout_prob = 1.5"),
    ("learning_rate choice [-0.1]", "must be positive"),
    ("freeze_kg choice ['maybe']", "expected True or False"),
    ("loss_type choice ['MSE']", "invalid choice"),
    ("hidden_size uniform 64 128", "invalid int value"),
    ("num_layers choice [2]", "already searched on line 1"),
])
def test_malformed_line_names_its_number(tmp_path, line, needle):
    path = write(tmp_path, f"num_layers choice [1]\n{line}\n")
    with pytest.raises(tune.UsageError) as e:
        tune.read_params_file(path)
    assert f"line 2: " in str(e.value) and needle in str(e.value)


def test_cli_rejects_before_training(tmp_path):
    path = write(tmp_path, "learning_rate choice [0.01]\nbogus choice [1]\n")
    out = tmp_path / "tune"
    rc = train.main(["tune", "--params_file", path, "--out_dir", str(out)])
    assert rc == 2 and not out.exists()
    fixed = write(tmp_path, "learning_rate choice [0.01]\n", "fixed.test")
    assert train.main(["tune", "--params_file", fixed, "--learning_rate", "0.1", "--out_dir", str(out)]) == 2
    assert train.main(["tune", "--params_file", fixed, "--learning_rate=0.1", "--out_dir", str(out)]) == 2
    assert tune.main(["--params_file", str(tmp_path / "missing.test")]) == 2  # python tune.py, the same program
    assert train.main(["tune", "--params_file", path, "--algo", "annealing"]) == 2


def test_grid_order_and_count(tmp_path):
    space = tune.read_params_file(write(tmp_path, "num_layers choice [1, 2]\nloss_type choice ['CE', 'BPR', 'CE']\n"))
    n, grid = tune.grid_settings(space)
    grid = list(grid)
    assert n == len(grid) == 6
    assert grid[:3] == [{"num_layers": 1, "loss_type": "CE"}, {"num_layers": 1, "loss_type": "BPR"},
                        {"num_layers": 1, "loss_type": "CE"}]  # the last line varies fastest
    assert list(tune.grid_settings(space, max_evals=4)[1]) == grid[:4]
    with pytest.raises(tune.UsageError, match="grid search needs choice"):
        tune.grid_settings(tune.read_params_file(write(tmp_path, "dropout_prob uniform 0 0.5\n", "u.test")))


def test_random_search_is_reproducible_and_distinct(tmp_path):
    space = tune.read_params_file(write(tmp_path, "learning_rate choice [0.01, 0.001, 0.0001]\nnum_layers choice [1, 2]\n"
                                                   "dropout_prob uniform 0 0.5\n"))
    a, b, c = (tune.random_settings(space, 5, seed) for seed in (7, 7, 8))
    assert a == b and a != c and len(a) == 5
    small = tune.read_params_file(write(tmp_path, "num_layers choice [1, 2, 3]\n", "small.test"))
    drawn = tune.random_settings(small, 10, seed=0)
    assert sorted(s["num_layers"] for s in drawn) == [1, 2, 3]  # no duplicates; the space has 3 settings


class Poison(dict):
    def __getitem__(self, key):
        raise AssertionError("selection read a test metric")

    get = __getitem__


def test_selection_reads_only_valid():
    trials = [{"trial": i, "valid": {"mrr@10": v}, "test": Poison()} for i, v in enumerate([0.02, 0.05, 0.05, 0.01])]
    assert tune.best_trial(trials, "mrr@10")["trial"] == 1  # best valid; the earlier trial on a tie


def test_tune_resumes_and_skips_finished_trials(tiny_dataset, tmp_path, capsys):
    path = write(tmp_path, "num_layers choice [1, 2]\nloss_type choice ['CE', 'BPR']\n")
    out = str(tmp_path / "tune")
    argv = ["tune", "--params_file", path, "--out_dir", out, "--dataset", "tiny", "--data_path", tiny_dataset,
            "--kg", "files", "--kg_embedding_size", "8", "--embedding_size", "8", "--hidden_size", "8", "--epochs", "1",
            "--algo", "grid", "--max_evals", "3"]
    assert train.main(argv) == 0
    with open(os.path.join(out, "tune.json")) as f:
        first = json.load(f)
    assert [t["params"] for t in first["trials"]] == [{"num_layers": 1, "loss_type": "CE"}, {"num_layers": 1, "loss_type": "BPR"},
                                                      {"num_layers": 2, "loss_type": "CE"}]
    for t in first["trials"]:
        assert os.path.exists(os.path.join(t["run_dir"], "results.json")) and t["epochs"] == 1
        assert set(t) >= {"params", "valid", "test", "epochs", "seconds", "run_dir"}
    assert first["best"] == tune.best_trial(first["trials"], "mrr@10")
    # a crash in trial 2: its results.json is gone; the re-run trains only that one
    os.remove(os.path.join(first["trials"][1]["run_dir"], "results.json"))
    stamp = os.path.getmtime(os.path.join(first["trials"][0]["run_dir"], "results.json"))
    capsys.readouterr()
    assert train.main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("(finished earlier)") == 2 and "trial 2/3: num_layers=1 loss_type=BPR ..." in log
    assert os.path.getmtime(os.path.join(first["trials"][0]["run_dir"], "results.json")) == stamp
    with open(os.path.join(out, "tune.json")) as f:
        again = json.load(f)
    assert [t["params"] for t in again["trials"]] == [t["params"] for t in first["trials"]]
    assert again["trials"][0]["test"] == first["trials"][0]["test"]
    # other fixed settings in the same folder: refused, nothing overwritten
    assert train.main(argv + ["--dropout_prob", "0.3"]) == 2
    assert os.path.getmtime(os.path.join(first["trials"][0]["run_dir"], "results.json")) == stamp


def test_ctrl_c_keeps_finished_trials(tiny_dataset, tmp_path, monkeypatch):
    path = write(tmp_path, "num_layers choice [1, 2, 3]\n")
    out = str(tmp_path / "tune")
    real_run, calls = train.run, []

    def run_then_interrupt(cfg, log=print):
        calls.append(cfg["num_layers"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(cfg, log)

    monkeypatch.setattr(train, "run", run_then_interrupt)
    argv = ["tune", "--params_file", path, "--out_dir", out, "--dataset", "tiny", "--data_path", tiny_dataset,
            "--kg", "files", "--kg_embedding_size", "8", "--embedding_size", "8", "--hidden_size", "8", "--epochs", "1"]
    assert train.main(argv) == 130
    with open(os.path.join(out, "tune.json")) as f:
        assert [t["params"] for t in json.load(f)["trials"]] == [{"num_layers": 1}]
    monkeypatch.setattr(train, "run", real_run)
    assert train.main(argv) == 0
    with open(os.path.join(out, "tune.json")) as f:
        assert [t["params"]["num_layers"] for t in json.load(f)["trials"]] == [1, 2, 3]
