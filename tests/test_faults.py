"""Hostile input and faults: each class of the contract, table-driven where it can be.

1. non-finite values are errors, never metrics;  2. nothing a user made is overwritten;
3. bounded work for any input;  4. one line and a non-zero exit, never a traceback.
"""
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

import data
import train
import transe
from extras import checkpoint, explain, fetch, prepare, run_lock, tune
from conftest import TRANSE, prepared_tiny_dataset, write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "tiny", "--kg", "files", "--kg_embedding_size", "8", "--embedding_size", "8",
        "--hidden_size", "8", "--epochs", "2", "--train_batch_size", "16"]


def one_line_error(capsys, rc, code, *needles):
    """The command returned `code` and printed exactly one line on stderr holding every needle."""
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def command(script, *args, **kw):
    """python SCRIPT ARGS, or python -m MODULE ARGS for a module of extras/ (script "extras.prepare")."""
    how = [script.replace("/", os.sep)] if script.endswith(".py") else ["-m", script]
    return subprocess.run([sys.executable, *how, *args], capture_output=True, text=True, cwd=ROOT, **kw)


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ 1. non-finite values

@pytest.mark.parametrize("args, needle", [
    (["--gamma", "nan"], "--gamma"), (["--gamma", "inf"], "--gamma"), (["--gamma", "-inf"], "--gamma"),
    (["--learning_rate", "inf"], "--learning_rate"), (["--learning_rate", "nan"], "--learning_rate"),
    (["--dropout_prob", "nan"], "--dropout_prob"), (["--dropout_prob", "1"], "--dropout_prob"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2 ** 32)], "--seed"), (["--max_steps", "-1"], "--max_steps"),
    (["--topk", "[10,x]"], "--topk"), (["--embedding_size", "0"], "--embedding_size"),
])
def test_bad_option_values(capsys, args, needle):
    one_line_error(capsys, train.main(args), 2, needle)


@pytest.mark.parametrize("line, needle", [
    ("learning_rate choice [1e400]", "learning_rate = inf"),
    ("learning_rate uniform 0.001 inf", "must be"),
    ("gamma choice [float('nan')]", "not a Python list literal"),
    ("seed choice [-1]", "seed = -1"),
    ("max_steps choice [-1]", "max_steps = -1"),
])
def test_tune_file_uses_the_same_checks(tmp_path, line, needle):
    path = tmp_path / "hyper.test"
    path.write_text(line + "\n")
    with pytest.raises(train.UsageError, match="line 1") as e:
        tune.read_params_file(str(path))
    assert needle in str(e.value)


@pytest.mark.parametrize("where, edit, needle", [
    ("tiny.ent_feature", lambda lines: lines[:2] + [lines[2].split("\t")[0] + "\tnan " + " ".join(["0.1"] * 7)] + lines[3:],
     "line 3: column 'ent_vec'"),
    ("tiny.rel_feature", lambda lines: lines[:1] + [lines[1].split("\t")[0] + "\t" + " ".join(["inf"] * 8)] + lines[2:],
     "line 2: column 'rel_vec'"),
    ("tiny.inter", lambda lines: lines[:4] + ["\t".join(lines[4].split("\t")[:3] + ["nan"])] + lines[5:],
     "line 5: column 'timestamp'"),
    ("tiny.kg", lambda lines: ["head_id:token\trelation_id:token\thead_id:token"] + lines[1:], "appears twice"),
    ("tiny.inter", lambda lines: ["user_id:token\titem_id:token\titem_id:float\ttimestamp:float"] + lines[1:], "appears twice"),
])
def test_bad_values_in_files_name_file_and_line(tiny_dataset, capsys, where, edit, needle):
    assert train.main(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", os.path.join(tiny_dataset, "r0")]) == 0
    capsys.readouterr()
    path = os.path.join(tiny_dataset, "tiny", where)
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(edit(lines)) + "\n")
    rc = train.main(TINY + ["--data_path", tiny_dataset, "--out_dir", os.path.join(tiny_dataset, "r1")])
    one_line_error(capsys, rc, 1, where, needle)


def test_nan_never_ranks_first():
    scores = torch.tensor([[float("-inf"), 0.5, float("nan"), 0.1], [float("-inf"), float("nan"), float("nan"), 0.2]])
    ranks = train.rank_of_target(scores, torch.tensor([2, 1]))
    assert ranks.tolist() == [3, 3]  # the last of the 3 real items, never rank 1
    assert train.rank_of_target(scores, torch.tensor([1, 3])).tolist() == [1, 1]  # NaN items do not rank above


def test_nan_scores_stop_evaluation(tiny_dataset):
    cfg = dict(vars(train.parse_args([])), dataset="tiny", data_path=tiny_dataset, kg="files", kg_embedding_size=8)
    ds = train.load_data(cfg, log=lambda m: None)
    model = train.build_model(cfg, ds)
    with torch.no_grad():
        model.item_embedding.weight[3, 0] = float("nan")
    with pytest.raises(train.NonFiniteError, match="NaN or inf"):
        checkpoint.evaluate(model, ds.valid, cfg, "cpu")


def test_diverging_run_stops_with_epoch_and_batch(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = train.main(TINY + ["--data_path", tiny_dataset, "--learning_rate", "1e30", "--train_mode", "prefix", "--out_dir", out])
    one_line_error(capsys, rc, 1, "epoch 0, batch 2/", "the training loss is", "training stopped; no checkpoint")
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_nan_after_a_good_epoch_keeps_the_best_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    real, calls = train.train_epoch, []

    def nan_in_second_epoch(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise train.NonFiniteError("batch 1/3: the training loss is nan")
        return real(*a, **kw)
    monkeypatch.setattr(train, "train_epoch", nan_in_second_epoch)
    out = str(tmp_path / "run")
    cfg = vars(train.parse_args(TINY + ["--data_path", tiny_dataset, "--out_dir", out]))
    with pytest.raises(train.NonFiniteError, match=r"epoch 1, batch 1/3.*best checkpoint so far \(epoch 0\) is kept"):
        train.run(cfg, log=lambda m: None)
    assert os.path.exists(os.path.join(out, "model.pt")) and not os.path.exists(os.path.join(out, "results.json"))
    assert train.main(["--eval_only", os.path.join(out, "model.pt"), "--data_path", tiny_dataset]) == 0


def test_tune_never_selects_a_diverged_trial(tiny_dataset, tmp_path, capsys):
    params = tmp_path / "lr.test"
    params.write_text("learning_rate choice [0.001, 1e30]\n")
    out = str(tmp_path / "tune")
    argv = ["--params_file", str(params), "--out_dir", out, "--data_path", tiny_dataset] + TINY
    assert tune.main(argv) == 0
    with open(os.path.join(out, "tune.json")) as f:
        result = json.load(f)
    assert "epoch 0" in result["trials"][1]["failed"] and "valid" not in result["trials"][1]
    assert result["best"]["trial"] == 0
    assert "FAILED" in capsys.readouterr().out
    assert tune.main(argv) == 0  # resumed: the failed trial is not run again
    assert capsys.readouterr().out.count("(finished earlier)") == 2


# ------------------------------------------------------------------ 2. nothing a user made is overwritten

def test_out_dir_with_a_run_is_refused_unless_overwrite(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", out]
    assert train.main(argv) == 0
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in ("model.pt", "results.json")}
    capsys.readouterr()
    one_line_error(capsys, train.main(argv), 1, out, "holds a run", "--overwrite")
    assert before == {f: os.path.getmtime(os.path.join(out, f)) for f in before}
    assert train.main(argv + ["--overwrite"]) == 0


def test_overwrite_removes_the_old_results_first(tiny_dataset, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    train.run(vars(train.parse_args(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", out])), log=lambda m: None)

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "rank_all", killed)  # killed during the first epoch of the new run
    with pytest.raises(KeyboardInterrupt):
        train.run(vars(train.parse_args(TINY + ["--data_path", tiny_dataset, "--overwrite", "--out_dir", out])), log=lambda m: None)
    assert not os.path.exists(os.path.join(out, "results.json"))  # never an old results.json beside a new model.pt


def test_users_feature_file_is_never_replaced(tmp_path, capsys):
    root = str(tmp_path)
    folder = write_tiny_dataset(root)
    mine = "ent_id:token\tent_vec:float_seq\n" + "".join(f"e{i}\t" + " ".join(["0.5"] * 8) + "\n" for i in range(1, 16))
    with open(os.path.join(folder, "tiny.ent_feature"), "w") as f:
        f.write(mine)
    rc = train.main(TINY + ["--data_path", root, "--out_dir", str(tmp_path / "r")])
    one_line_error(capsys, rc, 1, "tiny.rel_feature: not found", "was not written by this project")
    with open(os.path.join(folder, "tiny.ent_feature")) as f:
        assert f.read() == mine
    assert not os.path.exists(os.path.join(folder, "tiny.rel_feature"))


def test_generated_feature_files_are_regenerated(tiny_dataset):
    load = lambda: data.load_dataset("tiny", tiny_dataset, "files", False, 8, 50, TRANSE, log=lambda m: None)
    first = load()
    os.remove(os.path.join(tiny_dataset, "tiny", "tiny.rel_feature"))  # ours (the .json says so): made again
    assert (load().item_kg == first.item_kg).all()


def test_kg_vector_cache_records_what_made_it(tiny_dataset, tmp_path, capsys, monkeypatch):
    """Our cached vectors (the .json marks them) are reused only when made with the same TransE
    settings and transe.py; another --kg_embedding_size, TransE setting or transe.py, or a damaged
    record, trains them again."""
    msgs = []
    load = lambda dim=8, **kw: data.load_dataset("tiny", tiny_dataset, "files", False, dim, 50, {**TRANSE, **kw},
                                                 log=msgs.append)
    first = load()
    meta = os.path.join(tiny_dataset, "tiny", "tiny.ent_feature.json")
    with open(meta) as f:
        record = json.load(f)
    made = transe.resolve(TRANSE, 30)  # the tiny KG: dense, lr 0.01
    assert made["optimizer"] == "dense" and made["learning_rate"] == 0.01
    assert record["transe"] == transe.record(8, made["epochs"], made["learning_rate"], made["seed"], "dense")
    with open(os.path.join(data.os.path.dirname(data.__file__), "transe.py"), "rb") as f:
        assert record["made_with"] == {"dim": 8, **TRANSE, "transe.py": hashlib.sha256(f.read()).hexdigest()[:16]}
    msgs.clear()
    assert (load().item_kg == first.item_kg).all() and not any("TransE" in m for m in msgs)  # the same: reused
    four = load(dim=4)
    assert four.item_kg.shape[1] == 4 and any("other settings (dim)" in m for m in msgs)
    msgs.clear()
    other = load(dim=4, seed=7)  # other TransE settings: vectors of their own beside the default ones, which stay
    tag = "transe-auto-e{epochs}-lrdefault-s7".format(**TRANSE)
    assert os.path.exists(os.path.join(tiny_dataset, "tiny", f"tiny.{tag}.ent_feature.json"))
    assert any("training TransE" in m for m in msgs) and not any("other settings" in m for m in msgs)
    assert not (other.item_kg == four.item_kg).all()  # another seed, other vectors
    msgs.clear()
    assert (load(dim=4).item_kg == four.item_kg).all() and not any("TransE" in m for m in msgs)  # the default ones kept
    assert (load(dim=4, seed=7).item_kg == other.item_kg).all() and not any("TransE" in m for m in msgs)  # and reused
    with open(meta, "w") as f:
        f.write('{"made_with": {"method": "TransE"}}\n')  # an older record, missing settings
    msgs.clear()
    load(dim=4)
    assert any("other settings (dim, epochs, optimizer, seed, transe.py)" in m for m in msgs)
    monkeypatch.setattr(data, "TRANSE_SOURCE", str(tmp_path / "transe.py"))  # another TransE: trained again
    (tmp_path / "transe.py").write_text("# another TransE\n")
    msgs.clear()
    load(dim=4)
    assert any("other settings (transe.py)" in m for m in msgs)


def test_a_users_vectors_of_another_size_are_refused(tiny_dataset, tmp_path, capsys):
    assert train.main(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", str(tmp_path / "a")]) == 0
    os.remove(os.path.join(tiny_dataset, "tiny", "tiny.ent_feature.json"))  # now the files are the user's own
    capsys.readouterr()
    rc = train.main(TINY + ["--data_path", tiny_dataset, "--kg_embedding_size", "4", "--out_dir", str(tmp_path / "b")])
    one_line_error(capsys, rc, 1, "have 8 dimensions", "--kg_embedding_size is 4")


def test_eval_only_takes_topk_and_refuses_what_it_cannot_change(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", out]) == 0
    ckpt = os.path.join(out, "model.pt")
    capsys.readouterr()
    assert train.main(["--eval_only", ckpt, "--data_path", tiny_dataset, "--topk", "3,5"]) == 0
    assert "@3" in capsys.readouterr().out
    for bad in (["--dataset", "ml-100k"], ["--kg", "attributes"], ["--epochs", "5"], ["--gamma=2"]):
        rc = train.main(["--eval_only", ckpt, "--data_path", tiny_dataset] + bad)
        one_line_error(capsys, rc, 2, bad[0].split("=")[0], "its own settings")


def test_a_second_tune_on_the_same_folder_is_refused_at_once(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "tune"
    out.mkdir()
    params = tmp_path / "p.test"
    params.write_text("num_layers choice [1, 2]\n")
    argv = ["--params_file", str(params), "--out_dir", str(out), "--data_path", tiny_dataset] + TINY
    (out / ".lock").write_text(f"{os.getpid()} {os.uname().nodename}")  # a live search holds it
    one_line_error(capsys, tune.main(argv), 2, "in use by another search", f"process {os.getpid()}")
    assert not (out / "trial-000").exists()
    (out / ".lock").write_text(f"{dead_pid()} {os.uname().nodename}")  # a killed search: stale
    assert tune.main(argv) == 0
    assert not (out / ".lock").exists()


def lock_holder(folder):
    """Another process of this project holding folder/.lock (train.locked), until it is killed."""
    code = ("import sys\nfrom extras import run_lock\nwith run_lock.locked(sys.argv[1], 'training run'):\n    print('held', flush=True)\n"
            "    sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, folder], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.mark.parametrize("holder, refused", [
    ("a live run", True),  # what two runs 0.5 s apart did: both wrote into one folder
    ("a killed run", False),  # its lock names a dead process and no one holds its flock: taken over
    ("another host", True),  # a pid of another machine means nothing here: never taken over
    ("an empty lock", False),  # a run killed before it wrote its name
])
def test_a_run_folder_is_held_by_one_run(tiny_dataset, tmp_path, capsys, holder, refused):
    out = tmp_path / "run"
    out.mkdir()
    proc, host = None, os.uname().nodename
    if holder in ("a live run", "a killed run"):
        proc = lock_holder(str(out))
        if holder == "a killed run":
            proc.kill()
            proc.wait()
    else:
        (out / ".lock").write_text("" if holder == "an empty lock" else "4242 elsewhere")
        host = "elsewhere"
    try:
        rc = train.main(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", str(out)])
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
    if refused:
        pid = proc.pid if proc else 4242
        one_line_error(capsys, rc, 1, f"--out_dir {out} is in use by another training run (process {pid} on {host}",
                       "wait for it")
        assert not (out / "model.pt").exists() and not (out / "results.json").exists()
    else:
        assert rc == 0 and sorted(os.listdir(out)) == ["model.pt", "results.json"]  # the lock released


def test_runs_started_in_the_same_second_get_folders_of_their_own(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A run with no --out_dir makes a new folder (os.mkdir: it makes one or fails), so two runs started
    in the same second never share one; no lock is taken for it, and none is left."""
    monkeypatch.setattr(train.time, "strftime", lambda fmt, *a: "20261206-120000")
    monkeypatch.chdir(tmp_path)
    argv = TINY + ["--epochs", "1", "--data_path", tiny_dataset]
    assert train.main(argv) == 0 and train.main(argv) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["tiny-files-20261206-120000", "tiny-files-20261206-120000-2"]
    for run in runs:
        assert sorted(os.listdir(tmp_path / "runs" / run)) == ["model.pt", "results.json"]
    (tmp_path / "blocked").write_text("a file where the folder of runs would be")
    rc = train.main(argv + ["--checkpoint_dir", str(tmp_path / "blocked")])
    one_line_error(capsys, rc, 1, "blocked", "cannot write the run there")


def test_the_run_folder_is_held_from_the_check_to_the_last_write(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen, real_save = [], train.save

    def save(obj, path):  # every file of the run is written while the run holds the folder
        seen.append((os.path.basename(path), (out / ".lock").read_text().split()[0]))
        real_save(obj, path)
    monkeypatch.setattr(train, "save", save)
    train.run(vars(train.parse_args(TINY + ["--data_path", tiny_dataset, "--out_dir", str(out)])), log=lambda m: None)
    assert seen[-1] == ("results.json", str(os.getpid())) and {pid for _, pid in seen} == {str(os.getpid())}
    assert "model.pt" in {name for name, _ in seen} and not (out / ".lock").exists()
    # the folder holds a run now; held by another, it is refused for that, before its files are looked at
    with run_lock.locked(str(out), "training run"):
        with pytest.raises(data.DataError, match="in use by another training run"):
            train.run(vars(train.parse_args(TINY + ["--data_path", tiny_dataset, "--out_dir", str(out)])), log=lambda m: None)


def test_damaged_files_of_our_own_are_one_line_or_a_warning(tiny_dataset, tmp_path, capsys):
    params = tmp_path / "p.test"
    params.write_text("num_layers choice [1]\n")
    out = tmp_path / "tune"
    argv = ["--params_file", str(params), "--out_dir", str(out), "--data_path", tiny_dataset] + TINY
    assert tune.main(argv) == 0
    (out / "trial-000" / "results.json").write_text("{not json")  # damaged by hand
    capsys.readouterr()
    one_line_error(capsys, tune.main(argv), 2, "trial-000/results.json: not a trial's results", "remove it")
    with open(os.path.join(tiny_dataset, "tiny", "tiny.ent_feature.json"), "w") as f:
        f.write("garbage\n")  # the record of what made our vectors: without it they are made again
    msgs = []
    ds = data.load_dataset("tiny", tiny_dataset, "files", False, 8, 50, TRANSE, log=msgs.append)
    assert ds.stats["transe_hits@10"] is not None and any("has no readable record" in m for m in msgs)


# ------------------------------------------------------------------ 3. bounded work

def test_random_search_larger_than_the_space_is_bounded(tmp_path, capsys):
    path = tmp_path / "two.test"
    path.write_text("loss_type choice ['CE', 'BPR']\n")
    space = tune.read_params_file(str(path))
    drawn = tune.random_settings(space, 10_000_000, seed=0)
    assert sorted(s["loss_type"] for s in drawn) == ["BPR", "CE"]
    q = tmp_path / "q.test"
    q.write_text("hidden_size quniform 64 256 64\nnum_layers choice [1, 2]\n")
    drawn = tune.random_settings(tune.read_params_file(str(q)), 100, seed=0)
    assert len(drawn) == 8 and len({tuple(s.values()) for s in drawn}) == 8  # 4 x 2, each once
    assert tune.main(["--params_file", str(path), "--algo", "random", "--max_evals", "10000000",
                      "--dataset", "nowhere", "--kg", "files", "--out_dir", str(tmp_path / "t")]) == 1
    assert "the space has only 2 settings" in capsys.readouterr().out


def test_a_huge_grid_is_never_materialised(tmp_path):
    path = tmp_path / "big.test"
    path.write_text("".join(f"{name} choice [{', '.join(str(v) for v in range(1, 9))}]\n"
                            for name in ("embedding_size", "hidden_size", "num_layers", "kg_embedding_size",
                                         "epochs", "stopping_step", "eval_batch_size", "train_batch_size", "seed", "max_steps")))
    space = tune.read_params_file(str(path))
    assert tune.space_size(space) == 8 ** 10
    n, settings = tune.grid_settings(space, max_evals=2)
    assert n == 2 and [s["max_steps"] for s in settings] == [1, 2]


# ------------------------------------------------------------------ 4. one line, not a traceback

def test_atomic_file_errors(tmp_path):
    path = tmp_path / "x.inter"
    raw = b"user_id:token\titem_id:token\nu1\t1\nu2\t\xe9t\xe9\n"
    path.write_bytes(raw)
    with pytest.raises(data.DataError, match=rf"x.inter: line 3: byte {raw.index(0xe9)} \(0xe9\) is not UTF-8"):
        data.read_atomic(str(path))


def test_no_user_with_a_valid_sample(tmp_path, capsys):
    folder = write_tiny_dataset(str(tmp_path), n_inter=(3, 3))
    rc = train.main(TINY + ["--data_path", str(tmp_path), "--out_dir", str(tmp_path / "r")])
    one_line_error(capsys, rc, 1, "tiny.inter", "4 interactions a valid sample needs")
    assert os.path.isdir(folder)


def test_out_dir_problems_are_found_before_the_data(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        rc = train.main(TINY + ["--data_path", str(tmp_path / "no_data"), "--out_dir", str(out)])
        one_line_error(capsys, rc, 1, str(out), "cannot write the run there")


def test_explain_plot_target_is_checked_first(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_text("never read: the --plot check comes first")
    for plot, needle in [(tmp_path / "missing" / "x.png", "does not exist"), (tmp_path, "is a folder")]:
        rc = explain.main(["--run", str(run), "--summary", "--plot", str(plot)])
        one_line_error(capsys, rc, 2, "--plot", needle)


def test_every_truncation_of_a_checkpoint_is_one_line(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", out]) == 0
    with open(os.path.join(out, "model.pt"), "rb") as f:
        whole = f.read()
    bad = str(tmp_path / "bad.pt")
    cuts = sorted(set(range(0, 200)) | set(range(200, len(whole), max(1, len(whole) // 300))))
    for cut in cuts:
        with open(bad, "wb") as f:
            f.write(whole[:cut])
        with pytest.raises(data.DataError, match="not a checkpoint written by train.py"):
            checkpoint.load_checkpoint(bad, {"data_path": str(tmp_path / "never_read")}, log=lambda m: None)
    for foreign in ({"model": {}}, [1, 2], {"config": {}, "fingerprint": "x", "epoch": 0}):
        torch.save(foreign, bad)
        capsys.readouterr()
        rc = train.main(["--eval_only", bad, "--data_path", str(tmp_path / "never_read")])
        one_line_error(capsys, rc, 1, "bad.pt: not a checkpoint")


def test_more_one_line_cases(tiny_dataset, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    rc = train.main(["--data_path", str(tmp_path / "a_file"), "--out_dir", str(tmp_path / "r")])  # ml-100k would be fetched there
    one_line_error(capsys, rc, 1, "a_file: cannot make the data folder")
    rc = tune.main(["--params_file", str(tmp_path)])  # a folder
    one_line_error(capsys, rc, 2, "--params_file", "file not found")
    (tmp_path / "latin1.test").write_bytes(b"learning_rate choice [0.01] # caf\xe9\n")
    rc = tune.main(["--params_file", str(tmp_path / "latin1.test")])
    one_line_error(capsys, rc, 2, "latin1.test: byte 33 is not UTF-8")
    rc = train.main(TINY + ["--data_path", tiny_dataset, "--embedding_size", str(10 ** 12), "--out_dir", str(tmp_path / "big")])
    one_line_error(capsys, rc, 1, "out of memory")


def test_a_huge_max_item_list_length_costs_nothing(tiny_dataset, tmp_path):
    """The padded width is the longest input there is, not the option: 10^9 allocates nothing more."""
    cfg = vars(train.parse_args(TINY + ["--data_path", tiny_dataset, "--MAX_ITEM_LIST_LENGTH", str(10 ** 9), "--epochs", "1",
                                        "--out_dir", str(tmp_path / "r")]))
    assert train.run(cfg, log=lambda m: None)["test"]["hit@10"] >= 0


def test_explain_plot_never_replaces_a_users_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    rc = explain.main(["--run", str(run), "--summary", "--plot", str(tmp_path / "notes.txt")])
    one_line_error(capsys, rc, 2, "exists and is not a PNG")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_file_size_limit_names_the_file_and_leaves_nothing_half_written(tiny_dataset, tmp_path):
    # the KG vectors (a cache) of a bigger KG: the entity file is over the limit
    write_tiny_dataset(str(tmp_path), name="big", n_items=3000)
    res = command("extras.prepare", "--dataset", "big", "--kg", "files", "--data_path", str(tmp_path), preexec_fn=_limit_file_size)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "big.ent_feature: cannot write it: File too large" in res.stderr, res.stderr
    assert not [f for f in os.listdir(tmp_path / "big") if f.startswith("tmp-") or f == "big.ent_feature"]
    # a checkpoint
    assert train.main(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", str(tmp_path / "warm")]) == 0
    out = tmp_path / "run"
    res = command("train.py", *TINY, "--data_path", tiny_dataset, "--out_dir", str(out), preexec_fn=_limit_file_size)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "model.pt: cannot write it: File too large" in res.stderr, res.stderr
    assert os.listdir(out) == []


@pytest.mark.parametrize("script", ["train.py", "extras.prepare"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, script):
    write_tiny_dataset(str(tmp_path), n_users=60, n_items=30000)  # 90k triples: TransE runs ~10 s, long enough to be interrupted
    args = ["--dataset", "tiny", "--kg", "files", "--data_path", str(tmp_path)]
    if script == "train.py":
        args += ["--epochs", "300", "--out_dir", str(tmp_path / "run")]
    # SIGINT's default action in the child even when pytest runs in a background job (which ignores
    # SIGINT, and Python keeps an inherited SIG_IGN: the run would finish and exit 0)
    how = [script] if script.endswith(".py") else ["-m", script]
    proc = subprocess.Popen([sys.executable, "-u", *how, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # interrupt while TransE (extras.prepare) or training (train.py) runs
        if "TransE epoch 1/" in line or "epoch   1" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().startswith("interrupted") and err.strip().count("\n") == 0, err
    assert not [f for f in os.listdir(os.path.join(tmp_path, "tiny")) if f.startswith("tmp-")]


def test_stale_temporary_files_are_removed_by_the_next_writer(tmp_path):
    pid = dead_pid()
    stale = [tmp_path / f"tmp-{pid}-abcd1234-results.json", tmp_path / f".fetch-{pid}-abcd_123"]
    stale[0].write_text("{")
    stale[1].mkdir()
    live = tmp_path / f"tmp-{os.getpid()}-abcd1234-model.pt"  # a run still writing: left alone
    live.write_text("")
    mine = tmp_path / "tmp-notes.txt"  # not ours
    mine.write_text("")
    train.save({"a": 1}, str(tmp_path / "results.json"))
    assert not any(p.exists() for p in stale) and live.exists() and mine.exists()


def _remove(folder, name):
    os.remove(os.path.join(folder, name))


@pytest.mark.parametrize("edit, argv, code, needle", [
    (lambda d: _remove(d, "tiny.inter"), [], 1, "tiny/tiny.inter: file not found"),
    (lambda d: _remove(d, "tiny.kg"), [], 1, "tiny/tiny.kg: file not found"),  # before the .inter is read
    (lambda d: _remove(d, "tiny.inter"), ["--kg", "attributes"], 1, "tiny/tiny.inter: file not found"),
    (lambda d: None, ["--dataset", "tiny/"], 2, "argument --dataset: 'tiny/' is not a dataset's name"),  # not tiny/tiny/.inter
    (lambda d: None, ["--dataset", "./tiny"], 2, "without a '/'"),
])
def test_missing_files_are_found_before_the_memory_check(tiny_dataset, tmp_path, capsys, monkeypatch, edit, argv, code, needle):
    """The order of the checks: the name, the folder, the files, then the memory they need (which
    reads the .inter's size), then what they hold."""
    edit(os.path.join(tiny_dataset, "tiny"))
    monkeypatch.setattr(data, "BIG_INTER_FILE", 0)  # the check runs for a file of any size
    monkeypatch.setattr(fetch, "check_ram", lambda *a: pytest.fail("the memory check ran before the files were found"))
    rc = train.main(TINY + ["--data_path", tiny_dataset, "--out_dir", str(tmp_path / "r")] + argv)
    one_line_error(capsys, rc, code, needle)


def test_the_memory_check_comes_before_reading(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "BIG_INTER_FILE", 0)  # the check runs for a file of any size
    monkeypatch.setattr(fetch, "available_memory", lambda: 10_000)  # bytes
    monkeypatch.setattr(data, "read_atomic", lambda *a, **k: pytest.fail("read before the memory check"))
    rc = train.main(TINY + ["--data_path", tiny_dataset, "--out_dir", str(tmp_path / "r")])
    one_line_error(capsys, rc, 1, "tiny.inter: about", "GiB of memory")


@pytest.mark.parametrize("where, column, typ, needle", [
    ("tiny.inter", "timestamp", "token", "column 'timestamp' is declared timestamp:token, but it must be timestamp:float"),
    ("tiny.inter", "timestamp", "token_seq", "it must be timestamp:float"),
    ("tiny.inter", "timestamp", "float_seq", "it must be timestamp:float"),
    ("tiny.inter", "user_id", "float", "it must be user_id:token"),
    ("tiny.kg", "relation_id", "token_seq", "it must be relation_id:token"),
    ("tiny.link", "entity_id", "float", "it must be entity_id:token"),
    ("tiny.item", "class", "float", "it must be class:token_seq"),
])
def test_a_column_of_the_wrong_type_is_one_line(tiny_dataset, tmp_path, capsys, where, column, typ, needle):
    """RecBole lets a header give any column any type; a timestamp:token would order each user's
    items by the order its values first appear in the file, not by time. Refused, naming the type."""
    path = os.path.join(tiny_dataset, "tiny", where)
    with open(path) as f:
        header, rest = f.read().split("\n", 1)
    with open(path, "w") as f:
        f.write("\t".join(f"{column}:{typ}" if c.split(":")[0] == column else c for c in header.split("\t")) + "\n" + rest)
    rc = train.main(TINY + ["--data_path", tiny_dataset, "--out_dir", str(tmp_path / "r")])
    one_line_error(capsys, rc, 1, f"{where}: line 1:", needle)


def test_a_full_disk_while_fetching_ml100k_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import zipfile

    def pip_download(cmd, **kw):  # the wheel, as pip would put it in the temporary folder
        with zipfile.ZipFile(os.path.join(cmd[cmd.index("-d") + 1], "recbole-1.2.1-py3-none-any.whl"), "w") as z:
            for name in fetch.ML100K_FILES:
                z.writestr(f"recbole/dataset_example/ml-100k/{name}", "x" * 100_000)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    copied = []

    def copy_until_full(src, dst):  # the disk fills during the third file, after part of it is written
        copied.append(dst.name)
        dst.write(src.read(50_000))
        if len(copied) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        dst.write(src.read())
    monkeypatch.setattr(fetch.subprocess, "run", pip_download)
    monkeypatch.setattr(fetch, "verify_sha256", lambda *a, **k: None)
    monkeypatch.setattr(fetch.shutil, "copyfileobj", copy_until_full)
    root = tmp_path / "dataset"
    rc = prepare.main(["--data_path", str(root)])
    one_line_error(capsys, rc, 1, f"{root / 'ml-100k'}: cannot write it: No space left on device")
    assert len(copied) == 3 and os.listdir(root) == []  # no ml-100k folder, no temporary one


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory):
    return prepared_tiny_dataset(tmp_path_factory, TINY)


def rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv).get(b"RANK")


@pytest.mark.parametrize("stop, lines", [
    ("SIGINT to torchrun", ["interrupted: every file written so far is complete"]),  # Ctrl-C (exit 130)
    ("SIGTERM to torchrun", ["stopped by torchrun"]),  # a scheduler ending the job (exit 143)
    # rank 0 sees its peer's socket close (gloo: exit 1), or torchrun's SIGTERM first (exit 143): one line either way
    ("rank 1 killed", ["error: the job lost a process: another process died", "stopped by torchrun"]),
])
def test_torchrun_ends_in_one_line_from_rank_0(ddp_root, tmp_path, stop, lines):
    from test_distributed import children, torchrun
    out = tmp_path / "run"
    job = torchrun(*TINY, "--data_path", ddp_root, "--epochs", "100000", "--stopping_step", "100000",
                   "--out_dir", str(out), start_new_session=True)
    try:
        for line in job.stdout:
            if line.startswith("epoch   0"):  # training, with a checkpoint written
                break
        workers = {rank_of(pid): int(pid) for pid in children(job.pid)}
        if stop == "rank 1 killed":
            os.kill(workers[b"1"], signal.SIGKILL)
        else:
            os.kill(job.pid, getattr(signal, stop.split()[0]))
        _, err = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    ours = [line for line in err.splitlines() if any(line.startswith(w) for w in lines)]
    assert len(ours) == 1, err  # said once, by rank 0
    assert job.returncode != 0 and "[rank" not in err and f'File "{ROOT}/' not in err, err  # no traceback of ours
    if stop == "rank 1 killed":  # torchrun's summary of the failed job: rank 0 ended by our exit code, not a signal
        assert re.search(r"rank +: 0 \(local_rank: 0\)\n +exitcode +: (1|143) ", err), err
    assert sorted(os.listdir(out)) == ["last.pt", "model.pt"]  # the best checkpoint and the state to resume kept; the lock released


@pytest.mark.parametrize("damage, needle", [
    (lambda c: c["model"]["dense_layer_u.weight"].view(-1).__setitem__(0, float("nan")), "its weight dense_layer_u.weight holds NaN"),
    (lambda c: c["config"].__setitem__("gamma", float("nan")), "its config's gamma is nan"),
])
def test_a_checkpoint_holding_a_nan_is_refused_by_explain_and_eval_only(tiny_dataset, tmp_path, capsys, damage, needle):
    run = tmp_path / "run"
    assert train.main(TINY + ["--data_path", tiny_dataset, "--epochs", "1", "--out_dir", str(run)]) == 0
    ckpt = torch.load(run / "model.pt", weights_only=False)
    damage(ckpt)  # edited or damaged by hand: train.py never saves a NaN
    torch.save(ckpt, run / "model.pt")
    capsys.readouterr()
    one_line_error(capsys, explain.main(["--run", str(run), "--summary"]), 1, "model.pt: ", needle)
    one_line_error(capsys, explain.main(["--run", str(run), "--user", "u1"]), 1, needle)
    one_line_error(capsys, train.main(["--eval_only", str(run / "model.pt")]), 1, needle)
