"""Compiling kernels/cpu.cpp into the library kernels/cpu.py loads. cpu.py's cache key holds this file's
text, so a change to these flags builds anew; cpu.py imports it only when the library it needs is missing.
"""
import os
import subprocess
import tempfile

# -fno-trapping-math, -fno-math-errno: floor and the gates vectorize; -ffp-contract=fast: a * b + c as one
# FMA, as BLAS does; -fopenmp: the threads are torch's own (cpu.cpp, for_each_tile)
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=fast", "-std=c++17",
         "-shared", "-fPIC"]
OPENMP = ["-fopenmp"]


def compile_library(cxx, source, path, log=None):
    """Compile `source` into `path`: aside, then renamed (never half a library), readable by others (a
    shared cache), with OpenMP, or where the compiler has none (Apple's clang) on one thread, said once.
    A failure raises RuntimeError with the compiler's first error line."""
    if log:
        log(f"kernels: compiling {source.name} with {cxx} into {path} (once: cached)")
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = os.environ.get("KSR_CXXFLAGS", "").split()  # e.g. -mno-avx512f: the AVX2 build on an AVX-512 CPU
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        run = lambda flags: subprocess.run([cxx, *FLAGS, *extra, *flags, str(source), "-o", tmp], capture_output=True,
                                           text=True)
        first = lambda done: (done.stderr.strip().splitlines() or ["(no message)"])[0]
        done = run(OPENMP)
        if done.returncode:
            without = run([])
            if not without.returncode and log:
                log(f"kernels: {cxx} cannot build with OpenMP ({first(done)}): the compiled kernels run on one thread")
            done = without
        if done.returncode:
            raise RuntimeError(f"{cxx} could not compile {source.name}: {first(done)}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp makes it private: another user of a shared cache could not load it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
