"""extras/distributed.py and train.py's `world > 1` lines: N processes (gloo, CPU) train and evaluate as one process does.

Processes are spawned from the test (torch.multiprocessing) or launched with torchrun, on the
tiny dataset; each runs on one thread.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import data
import train
from extras import checkpoint, distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--dataset", "tiny", "--kg", "files", "--kg_embedding_size", "8", "--embedding_size", "8", "--hidden_size", "8",
         "--dropout_prob", "0"]  # dropout masks are drawn per process: off, so that the trajectories can be equal


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps(cfg, k):
    """Weights after k optimizer steps of train_epoch, in float64, and the valid/test metrics."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(cfg["seed"])
    ds = train.load_data(cfg, log=lambda m: None)
    model = train.build_model(cfg, ds).double()
    opt = train.make_optimizer(model, cfg)
    split = ds.train
    if cfg["train_mode"] == "sequence":
        split = data.sequence_windows(ds.seqs, ds.train, cfg["MAX_ITEM_LIST_LENGTH"], cfg["window_stride"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if train.world()[1] > 1 else model
    train.train_epoch(ddp, opt, split, dict(cfg, max_steps=k), "cpu", gen)
    metrics = {name: checkpoint.evaluate(model, getattr(ds, name), cfg, "cpu") for name in ("valid", "test")}
    return {k: v.clone() for k, v in model.state_dict().items()}, metrics


def _in_group(rank, world, port, out, work):
    """Run work() as process `rank` of `world` (gloo, one thread), rank 0 saving its result to `out`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    distributed.setup("cpu")
    try:
        results = work()
        if rank == 0:
            torch.save(results, out)
    except BaseException:
        distributed.shutdown(finished=False)
        raise
    distributed.shutdown()


def _worker(rank, world, port, cfgs, k, out):
    _in_group(rank, world, port, out, lambda: [steps(cfg, k) for cfg in cfgs])


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from conftest import prepared_tiny_dataset
    return prepared_tiny_dataset(tmp_path_factory, SMALL)


# (train_mode, loss_type, train_batch_size): batches that do not divide by 2, and batch 1 (the second process
# has nothing in any batch: it still takes part in every all-reduce)
CASES = [("prefix", "CE", 7), ("prefix", "BPR", 7), ("sequence", "CE", 5), ("sequence", "BPR", 5), ("prefix", "CE", 1)]


def test_two_processes_take_the_one_process_step(tiny_root, tmp_path):
    cfgs = [vars(train.parse_args(SMALL + ["--data_path", tiny_root, "--train_mode", mode, "--loss_type", loss,
                                           "--train_batch_size", str(batch), "--eval_batch_size", "5"]))
            for mode, loss, batch in CASES]
    old = torch.get_default_dtype()
    try:
        ones = [steps(cfg, 3) for cfg in cfgs]
    finally:
        torch.set_default_dtype(old)
    out = str(tmp_path / "two.pt")
    mp.spawn(_worker, args=(2, free_port(), cfgs, 3, out), nprocs=2)
    for case, (one, one_metrics), (two, two_metrics) in zip(CASES, ones, torch.load(out, weights_only=False)):
        # float64. The gradient is the same sum in another order (two halves, then the all-reduce): equal to
        # rounding, ~1e-16. Adam divides by sqrt(v), so where the gradient is a near-cancelling sum (the item
        # bias under CE: softmax weights minus the target) three steps can grow that to ~1e-11: atol 1e-10.
        for name in one:
            print(case, name, float((one[name] - two[name]).abs().max()))
            torch.testing.assert_close(two[name], one[name], rtol=1e-10, atol=1e-10)
        assert two_metrics == one_metrics or all(  # integer ranks: equal unless a score tie moved at 1e-16
            abs(two_metrics[s][m] - one_metrics[s][m]) < 1e-9 for s in one_metrics for m in one_metrics[s])


def evaluations(cfgs):
    out = []
    for cfg in cfgs:
        torch.manual_seed(0)
        ds = train.load_data(cfg, log=lambda m: None)
        model = train.build_model(cfg, ds)
        out.append({name: checkpoint.evaluate(model, getattr(ds, name), cfg, "cpu") for name in ("valid", "test")})
    return out


def _eval_worker(rank, world, port, cfgs, out):
    _in_group(rank, world, port, out, lambda: evaluations(cfgs))


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_evaluation_is_exactly_one_process(tiny_root, tmp_path, world):
    # 12 users: batches of 5, 5 and 2 (two processes: 2 and 1 batches; three: one each), or one batch of all
    cfgs = [vars(train.parse_args(SMALL + ["--data_path", tiny_root, "--eval_batch_size", str(b), "--topk", "1,5,10"]))
            for b in (5, 100)]
    want = evaluations(cfgs)
    out = str(tmp_path / "eval.pt")
    mp.spawn(_eval_worker, args=(world, free_port(), cfgs, out), nprocs=world)
    assert torch.load(out, weights_only=False) == want  # exactly: whole batches, integer ranks


def children(pid):
    """Pids of a process's children, from /proc (the workers torchrun started)."""
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                if d.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(d)
        except OSError:
            continue
    return sorted(out, key=int)


def torchrun(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", KSR_DIST_TIMEOUT="60")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           os.path.join(ROOT, "train.py"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_torchrun_writes_one_run_and_a_dead_process_ends_the_job(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(*SMALL, "--data_path", tiny_root, "--epochs", "3", "--out_dir", str(out))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert sorted(os.listdir(out)) == ["model.pt", "results.json"]
    assert stdout.count("best valid") == 1  # only rank 0 prints
    with open(out / "results.json") as f:
        assert json.load(f)["world_size"] == 2
    assert train.main(["--eval_only", str(out / "model.pt"), "--data_path", tiny_root]) == 0  # loads in one process

    # the same bad option on every process: one line each, a non-zero exit, no hang
    bad = torchrun(*SMALL, "--data_path", tiny_root, "--gamma", "nan")
    _, err = bad.communicate(timeout=120)
    assert bad.returncode != 0 and err.count("train.py: error: argument --gamma") == 2, err

    # bad data: rank 0 fails first and the other process raises the same error instead of waiting
    bad = torchrun(*SMALL, "--data_path", str(tmp_path / "nothing"), "--out_dir", str(tmp_path / "r2"))
    _, err = bad.communicate(timeout=120)
    assert bad.returncode != 0 and err.count("dataset folder not found") == 2, err

    # a process killed mid-training: the job ends, non-zero, within the bound
    job = torchrun(*SMALL, "--data_path", tiny_root, "--epochs", "100000", "--stopping_step", "100000",
                   "--out_dir", str(tmp_path / "killed"), start_new_session=True)
    for line in job.stdout:
        if line.startswith("epoch   3"):
            break
    workers = children(job.pid)
    assert len(workers) == 2, workers
    t0 = time.time()
    os.kill(int(workers[1]), signal.SIGKILL)
    try:
        job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0 and time.time() - t0 < 90
    print(f"the job ended {time.time() - t0:.1f}s after a process was killed")


def test_tune_explain_and_eval_only_stay_single_process(monkeypatch, capsys):
    from extras import explain
    from extras import tune
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert tune.main(["--params_file", "extras/hyper.test"]) == 2
    assert explain.main(["--run", "x", "--summary"]) == 2
    assert train.main(["--eval_only", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert "tune runs in one process" in err and "explain runs in one process" in err and "--eval_only runs in one" in err
