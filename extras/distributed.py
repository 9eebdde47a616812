"""More than one process: what train.py needs from torch.distributed, and nothing else.

    torchrun --nproc_per_node 2 train.py --dataset ml-100k                   # one machine, CPU (gloo)
    torchrun --nproc_per_node 8 train.py --dataset ml-100k --device cuda     # one GPU per process (nccl)
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 train.py ...   # two machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them every function here is the
single-process identity, so `python train.py` is exactly the one-process run. The contract
(tests/test_distributed.py):
  * every rank takes its contiguous slice of every global batch of the same permutation, and
    gradients are summed over ranks so that N processes take the step one process takes;
  * evaluation gives each rank whole evaluation batches, round-robin, computed exactly as one
    process computes them, and gathers the integer ranks: the metrics are the same, bit for bit;
  * rank 0 prepares data and run folders first; an error there is raised on every rank, so
    every process prints the same one line; a dead process ends the job (its peers' next
    collective fails, and torchrun stops the rest with SIGTERM), never a hang. The job's own
    ends (Ctrl-C, torchrun's SIGTERM, a lost process) are one line, from rank 0 (options.cli).
"""
import datetime
import os
import signal

import torch
import torch.distributed as dist

from options import Stopped

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("KSR_DIST_TIMEOUT", 600)))  # the bound on any wait for a peer


def launched():
    """True under torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device):
    """Join the process group torchrun describes (gloo on the CPU, nccl with --device cuda,
    each process on its LOCAL_RANK GPU). A no-op for one process."""
    if not launched() or dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    signal.signal(signal.SIGTERM, _stopped)  # torchrun's way of ending its workers (Ctrl-C reaches them as SIGINT)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=TIMEOUT)


def _stopped(signum, frame):
    """torchrun sends SIGTERM when another process failed or the job is stopped: raised as options.Stopped,
    so that `finally` blocks run (the run folder's lock is released) and cli() says it in one line."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the cleanup short
    raise Stopped


def run_job(run, cfg):
    """run(cfg) as one process of torchrun's job: join the group, run, leave (after an error, without
    waiting for peers that may be gone)."""
    setup(cfg["device"])
    try:
        run(cfg)
    except BaseException:
        shutdown(finished=False)
        raise
    shutdown()


def shutdown(finished=True):
    """Leave the process group. finished: this process got to the end, as every other will: wait
    for them first (a barrier), so that none tears the group down while another still uses it
    (gloo then aborts a process now and then). After an error, no waiting for peers that may be gone."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
        # the job is over for this process: a SIGTERM now (torchrun reacting to a dead peer) must not turn
        # into an exception while cli() prints its last line, or after it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def main_first(fn):
    """fn() on rank 0, then on the others (rank 0 downloads, trains TransE, writes the caches;
    the others read them). An exception on rank 0 is raised again on every other rank, with
    the same message, so the whole job stops with one line per process."""
    if world_size() == 1:
        return fn()
    error, out = None, None
    if rank() == 0:
        try:
            out = fn()
        except Exception as e:  # any failure: the others must hear of it instead of waiting
            error = e
    box = [(type(error), str(error)) if error is not None else None]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        kind, message = box[0]
        raise kind(message)
    return fn() if rank() != 0 else out


def gather(part):
    """Every rank's `part` (a dict), merged, on every rank (one process: `part` itself)."""
    if world_size() == 1:
        return part
    parts = [None] * world_size()
    dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def all_sum(values, device):
    """Element-wise sum over ranks of a list of numbers (one process: the list itself)."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(model, device):
    """The model inside DistributedDataParallel when there is more than one process, else the
    model itself. DDP averages gradients over ranks; train_epoch scales each rank's loss so that
    the average is the one-process gradient. (DDP also sends rank 0's buffers, the R x K relation
    keys, with every step: the same values, a few KB.)"""
    if world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)
