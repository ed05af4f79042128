"""ONNX Runtime against PyTorch on the CPU: the released DVMSR x4 as one dynamic-size file beside fixed-size ones.

    python benchmarks/bench_onnx.py [--weights DVMSR.pth] [--out-dir /tmp/onnx] [--sizes 64 128 256]
                                    [--fixed-sizes 64 128]

One ``--dynamic`` export (traced at 64x64; ``dvmsr_mma.tools.export.export_onnx`` checks it in onnxruntime at 64x64,
128x128 and 65x67) and one fixed-size export per ``--fixed-sizes`` entry (each checked at its size). Per file: its
size, node count (top level, and with the ONNX ``Scan`` bodies) and the session load time; per LR size and file,
the median of 5 runs (after one warm-up) on one random image and the max abs difference from PyTorch, next to
PyTorch with the numba scan and with the PyTorch scan. Without ``--weights`` the released architecture runs with
random weights (the same sizes, nodes and times). Needs the ``[onnx]`` extra.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dvmsr_mma  # noqa: E402,F401  (first: its OpenMP default applies only before torch loads)

# isort: split
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from dvmsr_mma.archs.dvmsr_arch import DVMSR  # noqa: E402
from dvmsr_mma.ops import force_torch_ops  # noqa: E402
from dvmsr_mma.tools.export import export_onnx, ort_session  # noqa: E402
from dvmsr_mma.tools.weights import load_weights  # noqa: E402


def median_time(fn, runs=5, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def node_counts(path):
    """(top-level nodes, nodes including the bodies of Scan / Loop / If)."""
    def count(graph):
        return sum(1 + sum(count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
                   for n in graph.node)
    graph = onnx.load(path).graph
    return len(graph.node), count(graph)


def export(net, path, **kw):
    start = time.perf_counter()
    result = export_onnx(net, path, 4, **kw)
    took = time.perf_counter() - start
    top, total = node_counts(path)
    start = time.perf_counter()
    session = ort_session(path)
    load = time.perf_counter() - start
    print(f'{result.summary()}; export+check {took:.1f} s, file {os.path.getsize(path) / 1e6:.1f} MB, {top} nodes '
          f'({total} with Scan bodies), session load {load:.2f} s', flush=True)
    return session


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', help='the released DVMSR x4 checkpoint (default: random weights)')
    parser.add_argument('--out-dir', default='.', help='where the .onnx files go')
    parser.add_argument('--sizes', type=int, nargs='+', default=[64, 128, 256], help='LR sizes timed')
    parser.add_argument('--fixed-sizes', type=int, nargs='*', default=[64, 128],
                        help='fixed-size exports (each timed at its own size; 256 takes long to export)')
    args = parser.parse_args()
    torch.manual_seed(0)
    net = DVMSR().eval()
    if args.weights:
        load_weights(net, args.weights)
    print(f'threads={torch.get_num_threads()}', flush=True)
    dynamic = export(net, os.path.join(args.out_dir, 'dvmsr_x4_dynamic.onnx'), size=(64, 64), dynamic=True)
    fixed = {s: export(net, os.path.join(args.out_dir, f'dvmsr_x4_{s}.onnx'), size=(s, s)) for s in args.fixed_sizes}
    for size in args.sizes:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            with force_torch_ops():
                ref = net(x).numpy()
                t_torch = median_time(lambda: net(x))
            t_numba = median_time(lambda: net(x))
        row = [f'{size}x{size}:']
        for name, session in (('dynamic', dynamic), ('fixed', fixed.get(size))):
            if session is not None:
                out = session.run(None, {'input': x.numpy()})[0]
                t = median_time(lambda: session.run(None, {'input': x.numpy()}))
                row.append(f'onnxruntime {name} {t:.3f} s (diff {np.abs(out - ref).max():.1e}),')
        print(' '.join(row), f'PyTorch numba scan {t_numba:.3f} s, PyTorch scan {t_torch:.3f} s', flush=True)


if __name__ == '__main__':
    main()
