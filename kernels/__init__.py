"""Optional fused Triton kernel for KSR's memory. Importing never fails and never touches a GPU:
without triton (macOS, Windows) `available()` says why and `kv_memory` raises that reason."""
from .kv_memory import available, kv_memory

__all__ = ["kv_memory", "available"]
