"""Fast paths beside ksr.py's reference; each has the signature of the reference it replaces and
computes the same function (tests prove it). train.build_model hands them to ksr.KSR.

    fast_torch.py  sorted_kv_memory (the default memory), memory_write, MemoryWriteFunction,
                   all_items_cross_entropy (the default CE loss): plain torch
    cpu.py         cpu_gru_layer (the GRU), cpu_kv_memory (the memory, write and read compiled),
                   cpu_cross_entropy (the CE), CPUDropout (the dropout's masks): compiled C++
                   loops, cpu.cpp; the default on the CPU
                   (optional: needs a C++ compiler; compiled once, cached)
    kv_memory.py   fused_kv_memory: the whole memory in one Triton kernel (optional, a CUDA GPU)

Importing never fails and never touches a GPU: without triton (macOS, Windows)
`unavailable_reason()` says why and `fused_kv_memory` raises that reason; without a C++
compiler `cpu_unavailable_reason()` says why and KSR keeps nn.GRU, sorted_kv_memory and nn.Dropout.
"""
from .fast_torch import MemoryWriteFunction, all_items_cross_entropy, memory_write, sorted_kv_memory
from .cpu import CPUDropout, cpu_cross_entropy, cpu_gru_layer, cpu_kv_memory
from .cpu import unavailable_reason as cpu_unavailable_reason
from .kv_memory import fused_kv_memory, unavailable_reason

__all__ = ["memory_write", "MemoryWriteFunction", "sorted_kv_memory", "all_items_cross_entropy", "cpu_gru_layer",
           "cpu_kv_memory", "cpu_cross_entropy", "CPUDropout", "cpu_unavailable_reason", "fused_kv_memory",
           "unavailable_reason"]
