"""compare.py: the t and bootstrap intervals against closed forms, the report on known rank arrays,
and the command: a failing configuration, reuse of finished runs, resume after a killed run."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import train
from extras import compare
from conftest import prepared_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "tiny", "--kg", "files", "--kg_embedding_size", "8", "--embedding_size", "8", "--hidden_size", "8",
        "--epochs", "2", "--eval_batch_size", "64"]


# -----------------------------------------------------------------------------
# Statistics

def test_t_quantile_matches_closed_forms_and_tables():
    assert compare.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-5)  # Cauchy: 12.706
    p = 0.975
    assert compare.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-6)  # 4.303
    for df, table in ((4, 2.7764), (9, 2.2622), (30, 2.0423)):  # any t table, 4 decimals
        assert compare.t_quantile(0.975, df) == pytest.approx(table, abs=6e-5)
    z, df = 1.959964, 10_000  # large df: the normal's quantile plus its first Cornish-Fisher term
    assert compare.t_quantile(0.975, df) == pytest.approx(z + (z ** 3 + z) / (4 * df), abs=1e-5)


@settings(max_examples=30)
@given(st.lists(st.floats(-1, 1), min_size=2, max_size=9))
def test_t_interval_is_mean_plus_minus_t_times_standard_error(values):
    mean, low, high = compare.t_interval(values)
    n = len(values)
    sd = math.sqrt(sum((v - sum(values) / n) ** 2 for v in values) / (n - 1))
    half = compare.t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    assert mean == pytest.approx(sum(values) / n, abs=1e-12)
    assert low == pytest.approx(mean - half, abs=1e-9) and high == pytest.approx(mean + half, abs=1e-9)


def test_one_seed_has_no_interval():
    mean, low, high = compare.t_interval([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)


def test_bootstrap_spread_is_the_closed_form_and_a_known_difference_is_found():
    rng = np.random.default_rng(0)
    d = rng.normal(0.02, 0.1, 943)  # 943 users, a true difference of 0.02 (standard error ~0.0033)
    means_sd = d.std(ddof=0) / math.sqrt(len(d))  # the bootstrap distribution of the mean: sd = sigma_hat / sqrt(n)
    low, high = compare.bootstrap_interval(d, n_boot=20000, seed=1)
    # the percentile interval of a mean of 943 values is the normal one to within Monte Carlo error (~1%)
    assert (high - low) / 2 == pytest.approx(1.95996 * means_sd, rel=0.04)
    assert low > 0 and low < d.mean() < high  # the difference is found, and the interval holds the observed mean
    assert compare.bootstrap_interval(d, n_boot=2000, seed=1) == compare.bootstrap_interval(d, n_boot=2000, seed=1)


def test_identical_inputs_give_an_interval_holding_zero():
    ranks = np.random.default_rng(1).integers(1, 50, 300)
    d = compare.per_user(ranks, "ndcg@10") - compare.per_user(ranks, "ndcg@10")
    low, high = compare.bootstrap_interval(d, n_boot=1000)
    assert low <= 0 <= high and low == high == 0


@pytest.mark.parametrize("metric", ["ndcg@10", "mrr@10", "hit@10", "recall@5", "precision@5", "map@10"])
def test_per_user_metrics_average_to_trains_metrics(metric):
    ranks = torch.randint(1, 40, (500,), generator=torch.Generator().manual_seed(2))
    k = int(metric.split("@")[1])
    want = train.metrics_from_ranks(ranks, [k], ["NDCG", "MRR", "Hit", "Recall", "Precision", "MAP"])[metric]
    assert compare.per_user(ranks.numpy(), metric).mean() == pytest.approx(want, rel=1e-12)


def fake_run(name, seed, ranks, users=None, epochs=(0.1, 0.2)):
    users = users or [f"u{i}" for i in range(len(ranks))]
    test = train.metrics_from_ranks(torch.tensor(ranks), [10])
    valid = [{"mrr@10": v} for v in epochs]
    return {"name": name, "seed": seed, "error": None, "argv": ["--x", "--seed", str(seed), "--out_dir", "d", "--overwrite"],
            "results": {"test": test, "best_valid": valid[-1], "valid": valid, "best_epoch": len(valid) - 1,
                        "total_seconds": 1.0, "ranks": {split: {"user": users, "rank": list(ranks)} for split in ("valid", "test")}}}


def test_report_pairs_users_and_seeds():
    """A ranks the target first for the first half of the users in every seed, B never: the paired
    difference is known in closed form, and the wins count seeds."""
    U = 200
    b = [20] * U
    runs = []
    for s in (1, 2, 3):
        a = [1] * (U // 2) + [20] * (U // 2)
        runs += [fake_run("A", s, a), fake_run("B", s, b)]
    rep = compare.report(runs, "MRR@10", n_boot=2000)
    pair = rep["pairs"][0]
    assert (pair["a"], pair["b"], pair["seeds"]) == ("A", "B", [1, 2, 3])
    assert pair["ndcg@10"]["mean"] == pytest.approx(0.5) and pair["hit@10"]["mean"] == pytest.approx(0.5)
    assert 0.4 < pair["ndcg@10"]["low"] < 0.5 < pair["ndcg@10"]["high"] < 0.6 and pair["ndcg@10"]["wins"] == 1.0
    assert compare.verdict(pair["ndcg@10"]) == "A better"
    assert pair["valid mrr@10"]["mean"] == pytest.approx(0.5 * (1 - 0))  # MRR@10: rank 1 -> 1, rank 20 -> 0
    assert rep["configs"]["A"]["test ndcg@10"]["per_seed"] == [0.5, 0.5, 0.5]
    # the same users in another order are paired user by user
    rep = compare.report([fake_run("A", 1, [1, 20, 20]), fake_run("B", 1, [20, 20, 1], users=["u2", "u1", "u0"])],
                         "MRR@10", 500)
    q = rep["pairs"][0]["ndcg@10"]
    assert q["paired"] and q["mean"] == 0 and q["low"] == q["high"] == 0  # u0 ranks 1 in both: no difference at all
    # other users: unpaired, resampled apart
    rep = compare.report([fake_run("A", 1, [1, 2]), fake_run("B", 1, [1, 2], users=["x", "y"])], "MRR@10", 100)
    assert rep["pairs"][0]["ndcg@10"]["paired"] is False


def test_unpaired_bootstrap_spread_is_the_closed_form():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.1, 0.2, 900), rng.normal(0.0, 0.1, 400)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))  # the bootstrap's: population variances over n
    low, high = compare.bootstrap_interval(a, b, n_boot=20000, seed=1)
    assert (high - low) / 2 == pytest.approx(1.95996 * se, rel=0.04) and low < a.mean() - b.mean() < high


# -----------------------------------------------------------------------------
# The command

def test_help_is_compares_own(capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(["--help"])
    assert e.value.code == 0 and "--seeds" in capsys.readouterr().out


def test_bad_command_lines_are_one_line_and_exit_2(capsys):
    for argv, needle in ((["--seeds", "2"], "no --config"), (["--config", "a:"], "at least two"),
                         (["--config", "a:", "--config", "a:"], "given twice"),
                         (["--config", "a:", "--seed", "3", "--config", "b:"], "--seed is set by compare.py"),
                         (["--config", "../x:", "--config", "b:"], "names a folder")):
        assert compare.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return prepared_tiny_dataset(tmp_path_factory, TINY)


def test_compare_runs_reports_reuses_and_isolates_a_failing_config(tiny_root, tmp_path, capsys):
    out = str(tmp_path / "cmp")
    argv = ["--seeds", "2", "--jobs", "2", "--out_dir", out, "--n_boot", "500", "--data_path", tiny_root, *TINY,
            "--config", "ksr:", "--config", "gru:", "--no_memory", "--config", "bad:", "--dropout_prob", "2",
            "--config", "top5:", "--topk", "5", "--valid_metric", "MRR@5", "--config", "nodata:", "--dataset", "nope"]
    assert compare.main(argv) == 0
    captured = capsys.readouterr()
    assert "bad: --dropout_prob: must be in [0, 1)" in captured.err  # one line, the others went on
    assert "top5: --topk/--metrics: compare reports NDCG, Hit, MRR and Recall @10" in captured.err
    assert "nodata seed 2020: FAILED, exit 1" in captured.out and "nope: dataset folder not found" in captured.out
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["configs"]["ksr"]["seeds"] == [2020, 2021] and rep["configs"]["bad"]["seeds"] == []
    per_seed = []
    for s in (2020, 2021):  # each a normal run, its stored metrics the mean of its per-user values
        res = json.load(open(os.path.join(out, "ksr", f"seed-{s}", "results.json")))
        assert res["config"]["seed"] == s and res["config"]["no_memory"] is False
        assert compare.per_user(res["ranks"]["test"]["rank"], "ndcg@10").mean() == pytest.approx(res["test"]["ndcg@10"], rel=1e-12)
        per_seed.append(res["test"]["ndcg@10"])
    assert rep["configs"]["ksr"]["test ndcg@10"]["per_seed"] == per_seed
    assert [(p["a"], p["b"]) for p in rep["pairs"]] == [("ksr", "gru")]
    md = open(os.path.join(out, "report.md")).read()
    assert "| ksr - gru | test ndcg@10 |" in md and "| ksr - gru | valid mrr@10 |" in md
    stamp = os.path.getmtime(os.path.join(out, "ksr", "seed-2020", "results.json"))
    assert compare.main(argv) == 0  # the same command again only reports
    assert "4 finished earlier), 2 to run" in capsys.readouterr().out  # (the failed nodata runs run again)
    assert os.path.getmtime(os.path.join(out, "ksr", "seed-2020", "results.json")) == stamp
    assert compare.main(["--json"] + argv[:-4]) == 0  # compare's own options come before the first --config
    assert json.loads(capsys.readouterr().out)["configs"]["gru"]["seeds"] == [2020, 2021]


def test_ctrl_c_then_the_same_command_resumes(tiny_root, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) during the runs: exit 130, finished runs kept; a
    killed run (a model.pt without results.json) is run again; the finished ones are not."""
    out = str(tmp_path / "cmp")
    argv = [sys.executable, os.path.join(ROOT, "train.py"), "compare", "--seeds", "2", "--jobs", "1", "--out_dir", out,
            "--n_boot", "200", "--data_path", tiny_root, *TINY, "--epochs", "3", "--config", "a:", "--config", "b:", "--no_memory"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = os.path.join(out, "a", "seed-2020", "results.json")
    deadline = time.time() + 120
    while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert os.path.exists(first), proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to continue" in err and "Traceback" not in err
    stamp = os.path.getmtime(first)
    left = [(c, s) for c in "ab" for s in (2020, 2021) if not os.path.exists(os.path.join(out, c, f"seed-{s}", "results.json"))]
    assert left  # it stopped before the end
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert os.path.getmtime(first) == stamp
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["configs"]["a"]["seeds"] == rep["configs"]["b"]["seeds"] == [2020, 2021]
