"""ONNX Runtime against PyTorch on the CPU: the released DVMSR x4 exported at fixed LR sizes, in one process.

    python benchmarks/bench_onnx.py --weights DVMSR.pth [--out-dir /tmp/onnx] [--sizes 64 128]

For each size: export with ``dvmsr_mma.export.export_onnx`` (which checks the file in onnxruntime), the file size,
the session load time, and the median of 5 runs (after one warm-up) of onnxruntime, PyTorch with the numba scan
and PyTorch with the PyTorch scan, on one random LR image. Needs the ``[onnx]`` extra.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dvmsr_mma  # noqa: E402,F401  (first: its OpenMP default applies only before torch loads)
import torch  # noqa: E402
from dvmsr_mma.archs.dvmsr_arch import DVMSR  # noqa: E402
from dvmsr_mma.export import export_onnx, ort_session  # noqa: E402
from dvmsr_mma.ops import force_torch_ops  # noqa: E402
from dvmsr_mma.weights import load_weights  # noqa: E402


def median_time(fn, runs=5, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', required=True, help='the released DVMSR x4 checkpoint')
    parser.add_argument('--out-dir', default='.', help='where the .onnx files go')
    parser.add_argument('--sizes', type=int, nargs='+', default=[64, 128])
    args = parser.parse_args()
    net = load_weights(DVMSR().eval(), args.weights)
    print(f'threads={torch.get_num_threads()}', flush=True)
    for size in args.sizes:
        path = os.path.join(args.out_dir, f'dvmsr_x4_{size}.onnx')
        start = time.perf_counter()
        result = export_onnx(net, path, 4, size=(size, size))
        print(result.summary(), f'export+check {time.perf_counter() - start:.1f} s, '
              f'file {os.path.getsize(path) / 1e6:.1f} MB', flush=True)
        start = time.perf_counter()
        session = ort_session(path)
        load = time.perf_counter() - start
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))
        t_ort = median_time(lambda: session.run(None, {'input': x.numpy()}))
        with torch.no_grad():
            t_numba = median_time(lambda: net(x))
            with force_torch_ops():
                t_torch = median_time(lambda: net(x))
        print(f'{size}x{size}: session load {load:.1f} s; median of 5: onnxruntime {t_ort:.3f} s, PyTorch numba '
              f'scan {t_numba:.3f} s, PyTorch scan {t_torch:.3f} s', flush=True)


if __name__ == '__main__':
    main()
