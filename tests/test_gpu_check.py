"""bench/gpu_check.py on a CPU machine that plays the GPU machine's part (no network: pip and downloads
refused; an older triton): it fails loudly, names what is missing, runs nothing it cannot, and never
exits 0 having tested nothing."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what the GPU machine has of the network: nothing (a download would fail at once, not hang)
NO_NETWORK = dict(PIP_NO_INDEX="1", PIP_INDEX_URL="http://127.0.0.1:9/simple", HTTP_PROXY="http://127.0.0.1:9",
                  HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")


def gpu_check(tmp_path, *args, env=None):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out), *args], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **NO_NETWORK, **(env or {})}, timeout=300)
    with open(out / "gpu.json") as f:
        return done, json.load(f), (out / "gpu.md").read_text()


def test_without_a_gpu_or_the_dataset_it_fails_loudly_and_runs_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    done, res, md = gpu_check(tmp_path, "--data_path", str(tmp_path / "empty"))
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines[0].startswith("gpu_check: python ") and "torch " in lines[0] and "triton " in lines[0]  # versions first
    assert "gpu_check: a CUDA GPU: FAILED: no CUDA device here" in lines
    assert any("ml-100k: FAILED" in ln and "no network; carry dataset/ml-100k" in ln for ln in lines)
    assert res["parts"] == {} and lines[-1].startswith("gpu_check: FAILED: a CUDA GPU, ml-100k")  # nothing ran
    assert "**FAILED**: a CUDA GPU" in md and not (tmp_path / "empty" / "ml-100k").exists()  # and nothing fetched


def test_a_dry_run_checks_every_part_and_still_fails_without_a_gpu(tmp_path):
    (tmp_path / "data" / "ml-100k").mkdir(parents=True)
    for name in ("ml-100k.inter", "ml-100k.item"):
        (tmp_path / "data" / "ml-100k" / name).write_text("")
    done, res, _ = gpu_check(tmp_path, "--data_path", str(tmp_path / "data"), "--dry_run")
    assert done.returncode == 1 and "gpu_check: ml-100k: there" in done.stdout, done.stdout + done.stderr
    assert set(res["parts"]) == {"kernels", "bench", "train", "torchrun"}
    assert all(p["ok"] for p in res["parts"].values()), res["parts"]  # every part's program is there and answers
    assert res["checks"]["a CUDA GPU"] == "no CUDA device here" and res["dry_run"]


def test_an_older_triton_is_named_first(tmp_path):
    """The machine's own triton (older than ours) is what the versions line names; without a GPU the
    check still fails."""
    fake = tmp_path / "site" / "triton"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "3.6.0"\n')
    done, res, _ = gpu_check(tmp_path, "--data_path", str(tmp_path), env={"PYTHONPATH": str(tmp_path / "site")})
    assert "triton 3.6.0" in done.stdout.splitlines()[0] and done.returncode == 1, done.stdout + done.stderr
