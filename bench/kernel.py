"""Benchmark the memory: torch reference (eager), the reference under torch.compile, the fused kernel.

    python -m bench.kernel                     # a GPU if there is one; else the torch rows on the CPU
    python -m bench.kernel --epoch             # also one ml-100k training epoch per --kernels column

For B in {256, 2048, 8192}, L=50, R=24, K=64, float32, query (B, K), trainable kg_seq: forward
and forward+backward times (median of --reps, after warm-up), the speed-up of the kernel over
each torch row, and the bytes the kernel must move at the least (each input read once, each
output written once) against the achieved bandwidth.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ksr  # noqa: E402
import kernels  # noqa: E402


def timed(fn, reps, device):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_bytes(B, L, R, K, backward):
    f = 4
    read = B * L * K * f + B * 8 + R * K * f + B * K * f      # kg_seq, lengths, relations, query
    written = B * K * f                                      # m
    if backward:
        read += B * K * f + read                              # dm, and the inputs again
        written += B * K * f + B * L * K * f                  # ds, d kg_seq
    return read + written


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,2048,8192")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--epoch", action="store_true", help="also time one ml-100k training epoch per --kernels column")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fused_ok = kernels.kv_memory.unavailable_reason() is None and device == "cuda"
    L, R, K, gamma = 50, 24, 64, 10.0
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, L={L} R={R} K={K} float32, query (B, K), trainable kg_seq")
    if not fused_ok:
        print("fused kernel: not measured here (" + (kernels.kv_memory.unavailable_reason() or "needs a CUDA GPU") + ")")
    compiled = torch.compile(ksr.kv_memory) if device == "cuda" else None
    print(f"{'B':>6} {'row':<16} {'fwd ms':>9} {'fwd+bwd ms':>11} {'kernel x faster (fwd+bwd)':>26}")
    for B in [int(b) for b in args.sizes.split(",")]:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.nn.functional.normalize(torch.randn(B, L, K, generator=g), dim=-1).to(device)
        lengths = torch.randint(1, L + 1, (B,), generator=g).to(device)
        rel = torch.nn.functional.normalize(torch.randn(R, K, generator=g), dim=-1).to(device)
        q = torch.randn(B, K, generator=g).to(device)
        rows = {"torch eager": ksr.kv_memory}
        if compiled is not None:
            rows["torch.compile"] = compiled
        if fused_ok:
            rows["fused kernel"] = kernels.kv_memory.fused_kv_memory
        res = {}
        for row, fn in rows.items():
            xr, qr = x.clone().requires_grad_(), q.clone().requires_grad_()

            def fwd():
                with torch.no_grad():
                    fn(x, lengths, rel, q, gamma)

            def fwd_bwd():
                fn(xr, lengths, rel, qr, gamma).sum().backward()
            res[row] = (timed(fwd, args.reps, device), timed(fwd_bwd, args.reps, device))
        for row, (f, fb) in res.items():
            extra = ""
            if fused_ok and row != "fused kernel":
                extra = f"{fb / res['fused kernel'][1]:.1f}x"
            elif row == "fused kernel":
                bw_f = floor_bytes(B, L, R, K, False) / f / 1e9
                bw_fb = floor_bytes(B, L, R, K, True) / fb / 1e9
                extra = f"floor {floor_bytes(B, L, R, K, True) / 1e6:.1f} MB, {bw_f:.0f}/{bw_fb:.0f} GB/s"
            print(f"{B:>6} {row:<16} {f * 1e3:>9.2f} {fb * 1e3:>11.2f} {extra:>26}")
    if args.epoch:
        import train
        for impl in ["torch"] + (["triton"] if fused_ok else []):
            cfg = vars(train.parse_args(["--kg", "freebase", "--train_mode", "prefix", "--device", device, "--kernels", impl]))
            ds = train.load_data(cfg, log=lambda m: None)
            model = train.build_model(cfg, ds).to(device)
            opt = train.make_optimizer(model, cfg)
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            train.train_epoch(model, opt, ds.train, cfg, device, gen)
            if device == "cuda":
                torch.cuda.synchronize()
            print(f"ml-100k (freebase) prefix training epoch, --kernels {impl}: {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
