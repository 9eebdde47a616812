"""Which code computes each operation of KSR: one table, one rule, one line in the log.

Every fast path has the signature of the ksr.py function it replaces and computes the same
function (tests/ prove it against ksr.py in float64):

    operation  reference (ksr.py)  torch (fast_torch.py)    cpp (cpu.py, cpu.cpp)   triton (kv_memory.py)
    gru        nn.GRU (ksr.GRU)    nn.GRU                   cpu_gru_layer           -
    memory     kv_memory           sorted_kv_memory         cpu_kv_memory (*)       fused_kv_memory
    ce         cross_entropy       all_items_cross_entropy  cpu_cross_entropy      -
    dropout    nn.Dropout          nn.Dropout               CPUDropout (**)         -

    (*)  a frozen KG only (--freeze_kg True, the default): its write has no backward; a trained
         KG's memory runs the torch one.
    (**) nn.Dropout's distribution, not its draws: the same seed drops other elements than
         nn.Dropout does, so runs with and without the compiled kernels differ by more than rounding.

--kernels picks one column (an operation the column has no entry for runs `torch`):
    auto       the fastest that works here: cpp on the CPU where a C++ compiler works (compiled
               once, cached), else torch; torch on a CUDA GPU (triton is asked for by name until
               a GPU run of bench/gpu_check.sh shows it faster end to end)
    reference  ksr.py alone, GRU included: the readable equations
    torch, cpp, triton   that column; one that cannot run here is refused in one line.
`choose` applies the rule, `describe` is the run's `kernels:` line; results.json keeps the choice.
Importing this package loads nothing but this table; an implementation's module is imported when
it is first used.
"""
import importlib

import torch

import ksr

CHOICES = ("auto", "reference", "torch", "cpp", "triton")
OPERATIONS = ("gru", "memory", "ce", "dropout")
# operation -> implementation -> "module:name" in this package (imported on first use), or the object itself;
# the GRU's None is ksr.GRU's own nn.GRU
TABLE = {
    "gru": {"reference": None, "torch": None, "cpp": "cpu:cpu_gru_layer"},
    "memory": {"reference": ksr.kv_memory, "torch": "fast_torch:sorted_kv_memory", "cpp": "cpu:cpu_kv_memory",
               "triton": "kv_memory:fused_kv_memory"},
    "ce": {"reference": ksr.cross_entropy, "torch": "fast_torch:all_items_cross_entropy", "cpp": "cpu:cpu_cross_entropy"},
    "dropout": {"reference": torch.nn.Dropout, "torch": torch.nn.Dropout, "cpp": "cpu:CPUDropout"},
}


def unavailable(impl, device, log=print):
    """None where the `impl` column can run on `device` ("cpu" or "cuda"), else why not (one line).
    Asking about cpp compiles the C++ library the first time (kernels/cpu.py: one line, then cached)."""
    if impl == "cpp":
        if device != "cpu":
            return "the compiled kernels run on the CPU (--device cpu)"
        return importlib.import_module(".cpu", __name__).unavailable_reason(log)
    if impl == "triton":
        return importlib.import_module(".kv_memory", __name__).unavailable_reason()
    return None


def choose(kernels, device, freeze_kg, log=print):
    """{operation: implementation} for --kernels `kernels`; raises ValueError (one line) where an
    implementation asked for by name cannot run here."""
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
        chosen["memory"] = "torch"  # (*) above
    return chosen


def function(op, impl):
    """The function (or module class) that implementation `impl` of operation `op` is."""
    f = TABLE[op][impl]
    if isinstance(f, str):
        module, name = f.split(":")
        f = getattr(importlib.import_module("." + module, __name__), name)
    return f


def describe(chosen):
    """The run's `kernels:` line: every operation, its column and its function."""
    name = lambda op, impl: "nn.GRU" if function(op, impl) is None else function(op, impl).__name__
    threads = torch.get_num_threads()
    return "kernels: " + ", ".join(f"{op} {impl} ({name(op, impl)})" for op, impl in chosen.items()) + \
        f"; {threads} thread" + "s" * (threads > 1)


# kernels.cpu_gru_layer, kernels.sorted_kv_memory, ...: each implementation by its name, loaded when first asked for
_NAMES = {spec.split(":")[1]: spec for row in TABLE.values() for spec in row.values() if isinstance(spec, str)}
_NAMES.update({"memory_write": "fast_torch:memory_write", "MemoryWriteFunction": "fast_torch:MemoryWriteFunction",
               "cpu_unavailable_reason": "cpu:unavailable_reason", "unavailable_reason": "kv_memory:unavailable_reason"})


def __getattr__(name):
    if name in _NAMES:
        module, attr = _NAMES[name].split(":")
        return getattr(importlib.import_module("." + module, __name__), attr)
    if name in ("cpu", "fast_torch", "kv_memory"):
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
