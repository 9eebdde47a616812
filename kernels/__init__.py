"""Which code computes each operation of KSR: one table, one rule, one line in the log. Each fast path
has the signature of the ksr.py function it replaces and computes the same function (tests/ prove it):

    operation  reference (ksr.py)  torch (fast_torch.py)    cpp (cpu.py, cpu.cpp)  triton (kv_memory.py)
    gru        nn.GRU (ksr.GRU)    nn.GRU                   cpu_gru_layer          -
    memory     kv_memory           sorted_kv_memory         cpu_kv_memory (1)      fused_kv_memory
    ce         cross_entropy       all_items_cross_entropy  cpu_cross_entropy      -
    dropout    nn.Dropout          nn.Dropout               CPUDropout (2)         -

(1) a frozen KG only (the default): its write has no backward; a trained KG's memory runs torch's.
(2) nn.Dropout's distribution, not its draws: the same seed drops other elements, so a run with
    the compiled kernels and one without differ by more than rounding.

--kernels picks a column (an operation it lacks runs torch's): `auto` the fastest that works here, cpp
on the CPU where a C++ compiler works (compiled once, cached) else torch, torch on a CUDA GPU (triton is
asked for by name until bench/gpu_check.py shows it faster); `reference` ksr.py alone, GRU included;
torch, cpp or triton by name, refused in one line where it cannot run. Modules load on first use.
"""
import importlib

import torch

import ksr

OPERATIONS = ("gru", "memory", "ce", "dropout")
# operation -> implementation -> the object, or "module:name" in this package; the GRU's None is ksr.GRU's nn.GRU
TABLE = {
    "gru": {"reference": None, "torch": None, "cpp": "cpu:cpu_gru_layer"},
    "memory": {"reference": ksr.kv_memory, "torch": "fast_torch:sorted_kv_memory", "cpp": "cpu:cpu_kv_memory",
               "triton": "kv_memory:fused_kv_memory"},
    "ce": {"reference": ksr.cross_entropy, "torch": "fast_torch:all_items_cross_entropy", "cpp": "cpu:cpu_cross_entropy"},
    "dropout": {"reference": torch.nn.Dropout, "torch": torch.nn.Dropout, "cpp": "cpu:CPUDropout"},
}


def unavailable(impl, device, log=print):
    """None where column `impl` can run on `device`, else why not (one line). Asking about cpp
    compiles the C++ library the first time (kernels/cpu.py says so in one line)."""
    if impl == "cpp":
        return "the compiled kernels run on the CPU (--device cpu)" if device != "cpu" else \
            importlib.import_module(".cpu", __name__).unavailable_reason(log)
    if impl == "triton":
        return importlib.import_module(".kv_memory", __name__).unavailable_reason()
    return None


def choose(kernels, device, freeze_kg, log=print):
    """{operation: implementation} for --kernels `kernels`; ValueError (one line) where a column asked
    for by name cannot run here."""
    impl = kernels
    if kernels == "auto":
        why = unavailable("cpp", device, log) if device == "cpu" else "on CUDA"
        impl = "torch" if why else "cpp"
        if why and device == "cpu":
            log(f"kernels: {why}; the torch column runs instead")
    elif (why := unavailable(kernels, device, log)):
        raise ValueError(f"--kernels {kernels}: {why}")
    chosen = {op: impl if impl in TABLE[op] else "torch" for op in OPERATIONS}
    if chosen["memory"] == "cpp" and not freeze_kg:
        chosen["memory"] = "torch"  # (1)
    return chosen


def function(op, impl):
    """The function (or module class) that implementation `impl` of operation `op` is."""
    f = TABLE[op][impl]
    if isinstance(f, str):
        module, name = f.split(":")
        f = getattr(importlib.import_module("." + module, __name__), name)
    return f


def describe(chosen):
    """The run's `kernels:` line: each operation, its column and its function."""
    name = lambda op, impl: getattr(function(op, impl), "__name__", "nn.GRU")
    threads = torch.get_num_threads()
    return "kernels: " + ", ".join(f"{op} {impl} ({name(op, impl)})" for op, impl in chosen.items()) + \
        f"; {threads} thread" + "s" * (threads > 1)


def __getattr__(name):  # kernels.cpu, kernels.fast_torch, kernels.kv_memory: imported when first asked for
    if name not in ("cpu", "fast_torch", "kv_memory"):
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    return importlib.import_module("." + name, __name__)
