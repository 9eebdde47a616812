"""The fast paths beside ksr.py's reference; each computes the same function (tests prove it).

    fast_torch.py  packed_gru, memory_write, MemoryWriteFunction, sorted_kv_memory (plain torch);
                   keep_freed_memory (the allocator: programs call it once)
    kv_memory.py   fused_kv_memory: the whole memory in one Triton kernel (optional)

Importing never fails and never touches a GPU: without triton (macOS, Windows)
`unavailable_reason()` says why and `fused_kv_memory` raises that reason.
"""
from .fast_torch import MemoryWriteFunction, keep_freed_memory, memory_write, packed_gru, sorted_kv_memory
from .kv_memory import fused_kv_memory, unavailable_reason

__all__ = ["packed_gru", "memory_write", "MemoryWriteFunction", "sorted_kv_memory", "fused_kv_memory",
           "unavailable_reason", "keep_freed_memory"]
