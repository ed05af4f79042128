"""Selective scan timings: PyTorch path vs a plain step-by-step loop (vs the CUDA kernel when present).

    python benchmarks/bench_scan.py [--quick] [--device cpu|cuda]

The step loop is slow (one Python step per token, autograd through all of them for fwd+bwd), so it runs once
per size, and its fwd+bwd is skipped at l=65536 (printed as 'skipped'). Peak memory is the growth of the
resident set over one no-grad forward in a fresh subprocess: the peak (VmHWM) is reset through
/proc/self/clear_refs just before the call, so import-time peaks do not hide it (tracemalloc does not see
torch's allocations). Linux only.
"""
import argparse
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dvmsr_mma.ops import force_torch_ops, selective_scan  # noqa: E402
from dvmsr_mma.ops.dispatch import probe_kernel  # noqa: E402

scan_mod = sys.modules['dvmsr_mma.ops.selective_scan']


def make(b, d, l, n, device, grad):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, l, generator=g)
    delta = torch.randn(b, d, l, generator=g) * 0.5
    A = -torch.rand(d, n, generator=g) - 0.1
    B = torch.randn(b, n, l, generator=g)
    C = torch.randn(b, n, l, generator=g)
    D = torch.randn(d, generator=g)
    z = torch.randn(b, d, l, generator=g)
    xs = [x.to(device).requires_grad_(grad) for x in (u, delta, A, B, C, D, z)]
    return xs


def timeit(fn, repeats, device):
    best = float('inf')
    for _ in range(repeats):
        if device == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def run_case(name, impl, b, d, l, n, device, backward, repeats):
    xs = make(b, d, l, n, device, backward)

    def call():
        if backward:
            impl(*xs, None, True).sum().backward()
        else:
            with torch.no_grad():
                impl(*xs, None, True)
    return timeit(call, repeats, device)


PEAK_RSS_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
from dvmsr_mma.ops.selective_scan import selective_scan_torch

def status_kb(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))

b, d, l, n = {b}, {d}, {l}, {n}
u, dl, B, C = torch.randn(b, d, l), torch.rand(b, d, l), torch.randn(b, n, l), torch.randn(b, n, l)
A = -torch.rand(d, n)
torch.set_grad_enabled(False)
selective_scan_torch(u[..., :64], dl[..., :64], A, B[..., :64], C[..., :64], None, None, None, True)  # warm-up
before = status_kb('VmRSS')
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset the peak (VmHWM) to the current RSS, so import-time peaks do not hide the forward's
y = selective_scan_torch(u, dl, A, B, C, None, None, None, True)
print((status_kb('VmHWM') - before) / 1024)
"""


def peak_rss_child(b, d, l, n):
    """Peak extra resident memory (MB) of one no-grad forward in a fresh process (Linux /proc), output included."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = PEAK_RSS_CHILD.format(root=root, b=b, d=d, l=l, n=n)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--quick', action='store_true', help='targets only, l=4096 grid, no l=65536 loop')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    device = args.device
    kernel = device == 'cuda' and probe_kernel('selective_scan_cuda') is not None
    print(f'device={device} threads={torch.get_num_threads()} kernel={"yes" if kernel else "no"}')

    def torch_path(*a):
        with force_torch_ops():
            return selective_scan(*a)

    loop = scan_mod.selective_scan_step_loop
    n = 16
    print('\n== targets ==')
    t_fwd = run_case('torch', torch_path, 1, 120, 16384, n, device, False, 5)
    l_fwd = run_case('loop', loop, 1, 120, 16384, n, device, False, 1)
    print(f'fwd     b=1 d=120 l=16384: torch {t_fwd:8.3f}s  loop {l_fwd:8.3f}s  loop/torch {l_fwd / t_fwd:6.2f}x')
    t_fb = run_case('torch', torch_path, 4, 120, 4096, n, device, True, 5)
    l_fb = run_case('loop', loop, 4, 120, 4096, n, device, True, 1)
    print(f'fwd+bwd b=4 d=120 l=4096 : torch {t_fb:8.3f}s  loop {l_fb:8.3f}s  loop/torch {l_fb / t_fb:6.2f}x')
    if device == 'cpu':
        mb = peak_rss_child(1, 120, 65536, n)
        print(f'peak extra RSS, no-grad fwd b=1 d=120 l=65536 n=16: {mb:.1f} MB (inputs allocated before)')

    print('\n== grid (b=1, n=16) ==')
    lengths = [4096] if args.quick else [4096, 65536]
    for d in (120, 384):
        for l in lengths:
            for backward in (False, True):
                what = 'fwd+bwd' if backward else 'fwd    '
                t = run_case('torch', torch_path, 1, d, l, n, device, backward, 1 if l > 4096 else 3)
                line = f'{what} d={d:3d} l={l:5d}: torch {t:8.3f}s'
                if backward and l > 4096:
                    line += '  loop  skipped (one Python step per token under autograd: too slow)'
                else:
                    lt = run_case('loop', loop, 1, d, l, n, device, backward, 1)
                    line += f'  loop {lt:8.3f}s  loop/torch {lt / t:6.2f}x'
                if kernel:
                    kt = run_case('kernel', selective_scan, 1, d, l, n, device, backward, 3)
                    line += f'  kernel {kt:8.4f}s  torch/kernel {t / kt:6.1f}x'
                print(line, flush=True)


if __name__ == '__main__':
    main()
