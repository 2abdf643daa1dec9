"""Independent references for the GPU run, through PyTorch: prints one JSON line.

    python3 scripts/gpu_reference.py [--sizes-mib 4,16,64,256,1024] [--samples 10] [--dgemm-n 8192]

- ``h2d``/``d2h``: pinned ``copy_(non_blocking=True)`` per size, timed with CUDA events (GB/s);
- ``d2d``: device-to-device ``copy_`` of 1 GiB, counting read plus write (GB/s, as ap-bandwidth);
- ``daxpy``: ``y.add_(x, alpha=2)`` over two 2 GiB float64 vectors, 24 bytes per element (GB/s),
  and a sweep over sizes to show the L2 knee;
- ``dgemm``: ``torch.mm`` in float64, 2 N^3 operations per call (TFLOPS).

Every figure is a list of samples with its median; the warm-up is at least 200 ms, as in
``cuda_src``. Exit codes: 0 measured, 3 no torch or no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def _series(values: list[float]) -> dict[str, Any]:
    return {"samples": [round(v, 3) for v in values], "median": round(statistics.median(values), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="4,16,64,256,1024")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--dgemm-n", type=int, default=8192)
    parser.add_argument("--daxpy-elements", type=int, default=256 * 1024 * 1024)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes_mib.split(",") if s.strip()]
    try:
        import torch
    except ImportError as exc:
        print(json.dumps({"tool": "gpu-reference", "error": f"no torch: {exc}"}))
        return 3
    if not torch.cuda.is_available():
        print(json.dumps({"tool": "gpu-reference", "error": "torch sees no CUDA device"}))
        return 3
    dev = torch.device("cuda", 0)
    stream = torch.cuda.Stream(device=dev)

    def timed(step: Any, repeat: int) -> list[float]:
        """Milliseconds of ``repeat`` calls of ``step`` between two events, per sample."""
        with torch.cuda.stream(stream):
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.25:  # warm-up of at least 200 ms
                step()
                stream.synchronize()
            out = []
            for _ in range(args.samples):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                for _ in range(repeat):
                    step()
                stop.record(stream)
                stop.synchronize()
                out.append(start.elapsed_time(stop))
        return out

    doc: dict[str, Any] = {
        "tool": "gpu-reference",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(dev),
        "h2d": {},
        "d2h": {},
    }
    for mib in sizes:
        n = mib << 20
        host = torch.ones(n, dtype=torch.uint8).pin_memory()
        gpu = torch.empty(n, dtype=torch.uint8, device=dev)
        repeat = max(1, 256 // mib)
        ms = timed(lambda g=gpu, h=host: g.copy_(h, non_blocking=True), repeat)
        doc["h2d"][str(mib)] = _series([n * repeat / (m * 1e-3) / 1e9 for m in ms])
        ms = timed(lambda g=gpu, h=host: h.copy_(g, non_blocking=True), repeat)
        doc["d2h"][str(mib)] = _series([n * repeat / (m * 1e-3) / 1e9 for m in ms])
        del host, gpu
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms = timed(lambda s=src, d=dst: d.copy_(s), 4)
    doc["d2d"] = _series([2 * src.numel() * 4 / (m * 1e-3) / 1e9 for m in ms])  # read + write, 4 copies
    src = dst = torch.empty(0, device=dev)  # frees the 2 GiB before the sweep
    sweep: dict[str, Any] = {}
    elements = 1 << 16
    while elements <= args.daxpy_elements:
        x = torch.ones(elements, dtype=torch.float64, device=dev)
        y = torch.zeros_like(x)
        repeat = max(1, (1 << 26) // elements)
        ms = timed(lambda x=x, y=y: y.add_(x, alpha=2.0), repeat)
        sweep[str(16 * elements)] = _series([24 * elements * repeat / (m * 1e-3) / 1e9 for m in ms])
        del x, y
        elements *= 4
    doc["daxpy_sweep_by_working_set_bytes"] = sweep
    doc["daxpy"] = sweep[max(sweep, key=int)]
    n = args.dgemm_n
    ma = torch.randint(-2, 3, (n, n), device=dev).to(torch.float64)
    mb = torch.randint(-2, 3, (n, n), device=dev).to(torch.float64)
    ms = timed(lambda: torch.mm(ma, mb), 2)
    doc["dgemm"] = _series([2 * 2.0 * n**3 / (m * 1e-3) / 1e12 for m in ms])
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
