"""train.py: metrics against brute force, the CLI, an end-to-end run, checkpoints."""
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import data
import kernels
import ksr
import options
import train
from extras import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@given(st.integers(1, 5), st.integers(2, 12), st.integers(0, 2 ** 31), st.integers(1, 4))
@settings(max_examples=100, deadline=None)
def test_rank_and_metrics_match_brute_force(B, N, seed, n_levels):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, n_levels, (B, N + 1), generator=g).double()  # few levels: many ties
    scores[:, 0] = float("-inf")
    targets = torch.randint(1, N + 1, (B,), generator=g)
    ranks = train.rank_of_target(scores, targets)
    topk = [1, 3, 10]
    got = train.metrics_from_ranks(ranks, topk)
    for b in range(B):
        # brute force: a stable sort by descending score, ties by ascending item id
        order = sorted(range(1, N + 1), key=lambda i: (-scores[b, i].item(), i))
        assert ranks[b].item() == order.index(targets[b].item()) + 1
    for k in topk:
        lists = [sorted(range(1, N + 1), key=lambda i: (-scores[b, i].item(), i))[:k] for b in range(B)]
        hit = [targets[b].item() in lists[b] for b in range(B)]
        pos = [lists[b].index(targets[b].item()) + 1 if hit[b] else None for b in range(B)]
        assert math.isclose(got[f"hit@{k}"], np.mean(hit))
        assert math.isclose(got[f"recall@{k}"], np.mean(hit))  # one relevant item
        assert math.isclose(got[f"precision@{k}"], np.mean(hit) / k)
        assert math.isclose(got[f"mrr@{k}"], np.mean([1 / p if p else 0 for p in pos]))
        assert math.isclose(got[f"ndcg@{k}"], np.mean([1 / math.log2(p + 1) if p else 0 for p in pos]))


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("args, needle", [
    (["--no_such_option", "1"], "unrecognized arguments: --no_such_option"),
    (["--learning_rate", "abc"], "--learning_rate"),
    (["--learning_rate", "-1"], "must be positive"),
    (["--loss_type", "MSE"], "--loss_type"),
    (["--freeze_kg", "maybe"], "expected True or False"),
    (["--valid_metric", "AUC@10"], "--valid_metric"),
    (["--topk", "[0]"], "--topk"),
])
def test_bad_options_exit_2_with_one_line(args, needle):
    out = _run(*args)
    assert out.returncode == 2
    assert needle in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr


def test_parse_recbole_names():
    args = train.parse_args(["--freeze_kg", "False", "--topk", "[5,10]", "--valid_metric", "NDCG@5", "--train_mode", "prefix"])
    assert args.freeze_kg is False and args.topk == [5, 10] and args.learning_rate == 0.001
    assert args.train_batch_size == 2048 and args.stopping_step == 10 and args.MAX_ITEM_LIST_LENGTH == 50
    seq = train.parse_args([])  # sequence mode is the default; its batch counts windows
    assert seq.train_mode == "sequence" and seq.train_batch_size == options.DEFAULTS["train_batch_size"] == 32
    assert seq.window_stride == seq.MAX_ITEM_LIST_LENGTH and seq.kg == "attributes" and seq.learning_rate == 0.002
    # the defaults that follow another option follow it; one given is kept
    assert train.parse_args(["--dataset", "other"]).kg == "files"
    assert train.parse_args(["--dataset", "other", "--kg", "attributes"]).kg == "attributes"
    assert train.parse_args(["--MAX_ITEM_LIST_LENGTH", "20"]).window_stride == 20
    assert train.parse_args(["--train_batch_size", "7"]).train_batch_size == 7


def tiny_cfg(root, out_dir, **kw):
    cfg = dict(vars(train.parse_args([])), dataset="tiny", data_path=root, kg="files", kg_embedding_size=8,
               embedding_size=8, hidden_size=12, epochs=2, train_batch_size=16, eval_batch_size=7,
               out_dir=out_dir, topk=[5, 10], train_mode="prefix")
    cfg.update(kw)
    return cfg


def test_end_to_end_results_and_checkpoint(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    res = train.run(tiny_cfg(tiny_dataset, out), log=lambda m: None)
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    for key in ["config", "epoch_seconds", "valid", "best_epoch", "test", "total_seconds", "dataset", "versions"]:
        assert key in saved
    assert len(saved["epoch_seconds"]) == 2 and len(saved["valid"]) == 2
    for key in ["ndcg@10", "hit@10", "mrr@10", "recall@10", "precision@10", "ndcg@5"]:
        assert 0 <= saved["test"][key] <= 1
    # the best epoch is chosen on valid MRR@10, never on test
    mrr = [v["mrr@10"] for v in saved["valid"]]
    assert saved["best_epoch"] == max(i for i, v in enumerate(mrr) if v == max(mrr))  # ties: the later epoch
    # the checkpoint reloads to the same test metrics
    again = checkpoint.eval_only(os.path.join(out, "model.pt"), {}, log=lambda m: None)
    assert again["test"] == res["test"]
    assert not [f for f in os.listdir(out) if f.startswith("tmp-")]


def test_deterministic_for_a_seed(tiny_dataset, tmp_path):
    a = train.run(tiny_cfg(tiny_dataset, str(tmp_path / "a"), loss_type="BPR"), log=lambda m: None)
    b = train.run(tiny_cfg(tiny_dataset, str(tmp_path / "b"), loss_type="BPR"), log=lambda m: None)
    assert a["train_loss"] == b["train_loss"] and a["test"] == b["test"]


@pytest.mark.parametrize("kw", [dict(no_memory=True), dict(freeze_kg=False), dict(kg="attributes", num_layers=2),
                                dict(train_mode="sequence"), dict(train_mode="sequence", freeze_kg=False, window_stride=2),
                                dict(train_mode="sequence", loss_type="BPR", no_memory=True)])
def test_variants_run(tiny_dataset, tmp_path, kw):
    res = train.run(tiny_cfg(tiny_dataset, str(tmp_path / "r"), epochs=1, **kw), log=lambda m: None)
    assert np.isfinite(res["train_loss"][0])


@pytest.mark.parametrize("train_mode", ["prefix", "sequence"])
def test_kernels_reference_runs_the_reference(tiny_dataset, tmp_path, train_mode):
    """--kernels reference builds KSR from ksr.py alone (ksr.kv_memory, ksr.cross_entropy, nn.GRU,
    nn.Dropout); it trains to the same losses as the fast paths: the default (auto: the compiled CPU
    kernels, where they compile), cpp by name, and torch."""
    want = {"reference": (ksr.kv_memory, ksr.cross_entropy, None, torch.nn.Dropout),
            "torch": (kernels.fast_torch.sorted_kv_memory, kernels.fast_torch.all_items_cross_entropy, None, torch.nn.Dropout),
            "cpp": (kernels.cpu.cpu_kv_memory, kernels.cpu.cpu_cross_entropy, kernels.cpu.cpu_gru_layer, kernels.cpu.CPUDropout)}
    if kernels.cpu.unavailable_reason():
        del want["cpp"]
    want["auto"] = want.get("cpp", want["torch"])
    losses = {}
    for name, path in want.items():
        cfg = tiny_cfg(tiny_dataset, str(tmp_path / name), epochs=2, train_mode=train_mode, dropout_prob=0.0, kernels=name)
        ds = train.load_data(cfg, log=lambda m: None)
        model = train.build_model(cfg, ds)
        assert (model.memory, model.ce, model.gru.layer, type(model.emb_dropout)) == path
        assert set(model.kernels.values()) == {name if name != "auto" else "cpp" if "cpp" in want else "torch"}
        res = train.run(cfg, log=lambda m: None)
        assert res["kernels"] == model.kernels  # results.json names what ran
        losses[name] = res["train_loss"]
    for name in want:
        np.testing.assert_allclose(losses[name], losses["reference"], rtol=1e-5)


def test_the_kernels_table_picks_one_column(monkeypatch):
    """--kernels: one column of kernels/__init__.py's table; auto on the CPU is cpp where it compiles, else
    torch, and torch on CUDA; a trained KG's memory is torch's (cpp's write has no backward); a column
    that cannot run here is refused in one line."""
    ops = kernels.OPERATIONS
    assert kernels.choose("reference", "cpu", True) == dict.fromkeys(ops, "reference")
    assert kernels.choose("torch", "cuda", True) == dict.fromkeys(ops, "torch")
    assert kernels.choose("auto", "cuda", True) == dict.fromkeys(ops, "torch")
    monkeypatch.setattr(kernels.cpu, "unavailable_reason", lambda log=None: None)
    assert kernels.choose("auto", "cpu", True) == dict.fromkeys(ops, "cpp")
    assert kernels.choose("cpp", "cpu", False) == dict(dict.fromkeys(ops, "cpp"), memory="torch")
    with pytest.raises(ValueError, match="--kernels cpp: the compiled kernels run on the CPU"):
        kernels.choose("cpp", "cuda", True)
    monkeypatch.setattr(kernels.cpu, "unavailable_reason", lambda log=None: "no C++ compiler")
    assert kernels.choose("auto", "cpu", True) == dict.fromkeys(ops, "torch")
    with pytest.raises(ValueError, match="--kernels cpp: no C\\+\\+ compiler"):
        kernels.choose("cpp", "cpu", True)
    triton_why = kernels.kv_memory.unavailable_reason()
    if triton_why is None:
        assert kernels.choose("triton", "cpu", True) == dict.fromkeys(ops, "torch") | {"memory": "triton"}
    else:
        with pytest.raises(ValueError, match="--kernels triton"):
            kernels.choose("triton", "cpu", True)
    line = kernels.describe(dict.fromkeys(ops, "reference"))
    assert line.startswith("kernels: gru reference (nn.GRU), memory reference (kv_memory), ce reference "
                           "(cross_entropy), dropout reference (Dropout); ")


@pytest.mark.parametrize("learner", ["adam", "adamw", "sgd"])
def test_make_optimizer_is_torchs_update(learner):
    """make_optimizer's optimizer (Adam and AdamW fused into one loop where torch has that) makes
    the same steps as torch's plain one, weight decay included."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(7, 5), torch.nn.Linear(7, 5)
    b.load_state_dict(a.state_dict())
    cfg = dict(learner=learner, learning_rate=0.01, weight_decay=0.1)
    got, want = train.make_optimizer(a, cfg), train.LEARNERS[learner](b.parameters(), lr=0.01, weight_decay=0.1, foreach=False)
    for _ in range(5):
        x = torch.randn(3, 7)
        for model, opt in ((a, got), (b, want)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_eval_only_command(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    train.run(tiny_cfg(tiny_dataset, out, epochs=1), log=lambda m: None)
    ok = _run("--eval_only", os.path.join(out, "model.pt"), "--data_path", tiny_dataset)
    assert ok.returncode == 0, ok.stderr
    assert "ndcg" in ok.stdout
    missing = _run("--eval_only", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and "file not found" in missing.stderr
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    junk = _run("--eval_only", str(tmp_path / "junk.pt"))
    assert junk.returncode == 1 and "not a checkpoint" in junk.stderr and junk.stderr.strip().count("\n") == 0


def test_changed_data_is_refused(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    train.run(tiny_cfg(tiny_dataset, out, epochs=1), log=lambda m: None)
    with open(os.path.join(tiny_dataset, "tiny", "tiny.inter"), "a") as f:
        f.write("u1\t3\t4\t9999999\n")
    with pytest.raises(data.DataError, match="fingerprint"):
        checkpoint.eval_only(os.path.join(out, "model.pt"), {}, log=lambda m: None)


def test_per_user_ranks_recompute_the_stored_metrics(tiny_dataset, tmp_path):
    """results.json keeps every valid (best epoch) and test user's rank of the target: the
    metrics recomputed from them are exactly the stored ones, user by user as the split has them."""
    out = tmp_path / "run"
    res = train.run(tiny_cfg(tiny_dataset, str(out), epochs=3), log=lambda m: None)
    with open(out / "results.json") as f:
        stored = json.load(f)
    ds = train.load_data(tiny_cfg(tiny_dataset, None), log=lambda m: None)
    for split, metrics in (("valid", stored["best_valid"]), ("test", stored["test"])):
        per_user = stored["ranks"][split]
        assert per_user["user"] == [ds.user_tokens[u] for u in getattr(ds, split).users]
        assert all(1 <= r <= ds.n_items for r in per_user["rank"])
        assert train.metrics_from_ranks(torch.tensor(per_user["rank"]), [5, 10]) == metrics
    assert stored["test"] == res["test"]


def test_a_stopped_run_resumed_ends_as_one_never_stopped(tiny_dataset, tmp_path, monkeypatch, capsys):
    """Killed after epoch 2 of 4 (on one thread), then `--resume`: the same test metrics, every user's
    rank and the same checkpoint weights as the run that never stopped; a finished run says so; a
    changed option is refused in one line."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resume_and_compare(tiny_dataset, tmp_path, monkeypatch, capsys)
    finally:
        torch.set_num_threads(threads)


def resume_and_compare(tiny_dataset, tmp_path, monkeypatch, capsys):
    argv = ["--dataset", "tiny", "--data_path", tiny_dataset, "--kg", "files", "--kg_embedding_size", "8",
            "--embedding_size", "8", "--hidden_size", "8", "--epochs", "4", "--train_batch_size", "4", "--stopping_step", "5"]
    assert train.main(argv + ["--out_dir", str(tmp_path / "whole")]) == 0
    real, calls = train.train_epoch, []

    def killed_in_the_third_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(train, "train_epoch", killed_in_the_third_epoch)
    assert train.main(argv + ["--out_dir", str(tmp_path / "stopped")]) == 130
    monkeypatch.setattr(train, "train_epoch", real)
    assert not (tmp_path / "stopped" / "results.json").exists()
    with pytest.raises(options.UsageError, match="--learning_rate: the run was started with 0.002"):
        train.train_main(["--resume", str(tmp_path / "stopped"), "--learning_rate", "0.1"])
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "stopped"), "--eval_batch_size", "5"]) == 0
    assert "going on after epoch 1 of 4" in capsys.readouterr().out
    load = lambda run, f: json.load(open(tmp_path / run / f)) if f.endswith(".json") else \
        torch.load(tmp_path / run / f, weights_only=False)
    whole, resumed = load("whole", "results.json"), load("stopped", "results.json")
    assert resumed["test"] == whole["test"] and resumed["ranks"] == whole["ranks"]
    assert resumed["train_loss"] == whole["train_loss"] and resumed["best_epoch"] == whole["best_epoch"]
    a, b = load("whole", "model.pt")["model"], load("stopped", "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train.main(["--resume", str(tmp_path / "stopped")]) == 0
    assert "the run finished" in capsys.readouterr().out


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_a_progress_bar_on_a_terminal_unless_quiet(tiny_dataset, tmp_path, monkeypatch, quiet):
    """A bar per epoch and per valid evaluation on stderr (tqdm: batches, rate, time left), only where
    stderr is a terminal and not --quiet; the log lines are the same either way."""
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    logs = []
    cfg = tiny_cfg(tiny_dataset, str(tmp_path / "r"), epochs=2, quiet=quiet)
    train.run(cfg, log=logs.append)
    bars = [ln for ln in err.getvalue().replace("\r", "\n").splitlines() if "batch/s" in ln]
    assert (not bars) if quiet else any("/4 [" in ln for ln in bars), err.getvalue()[-500:]  # 4 batches an epoch
    assert len([ln for ln in logs if ln.startswith("epoch")]) == 2
