"""Selective scan benchmark: this package's paths against the landed implementation, in one run.

    python benchmarks/bench_scan.py [--quick] [--device cpu|cuda]

Reference ("landed"): ``selective_scan_torch`` of commit a331bce, read from this repository's git history, as it
was before the numba scan. Also measured: the current PyTorch path (the fallback without numba), the numba CPU
scan behind the (b, d, l) API (``dvmsr_mma.ops.scan_lanes``), mambapy's parallel scan where ``mambapy`` is
installed (the published pure-PyTorch peer), a plain step loop on the small grid, and the CUDA kernel on
``--device cuda``. Every case calls the scan as DVMSR does (D, the z gate, delta_bias, softplus). Times are the
best of a few runs; transient memory is the growth of the resident set over one forward in a fresh process
(VmHWM reset through /proc/self/clear_refs, Linux; MALLOC_MMAP_THRESHOLD_ so that glibc returns each large block
at its free), less the output, without grad and with inputs that require it (what the forward keeps for the
backward counts); "under load" runs with two busy-loop processes beside it. ``dvmsr_mma`` is imported before
torch, as in a ``basicsr`` command, so torch's OpenMP threads spin as the package sets them
(``dvmsr_mma/__init__.py``); the DVMSR under-load case is also run in a child with libgomp's default spin.
"""
import argparse
import contextlib
import os
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dvmsr_mma  # noqa: E402,F401  (first: its OpenMP default applies only before torch loads)

# isort: split
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dvmsr_mma.archs.dvmsr_arch import DVMSR  # noqa: E402
from dvmsr_mma.ops import force_torch_ops, selective_scan  # noqa: E402
from dvmsr_mma.ops.dispatch import probe  # noqa: E402

LANDED = 'a331bce'
scan_mod = sys.modules['dvmsr_mma.ops.scan_torch']


def landed_scan():
    """``selective_scan_torch`` as of LANDED, or None without the git history."""
    try:
        src = subprocess.run(['git', '-C', ROOT, 'show', f'{LANDED}:dvmsr_mma/ops/selective_scan.py'],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType('landed_selective_scan')
    exec(compile(src.replace('from .dispatch import use_kernel', 'use_kernel = None'), f'{LANDED}:selective_scan.py',
                 'exec'), module.__dict__)
    return module.selective_scan_torch


def mambapy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mambapy's ``selective_scan`` (its ``pscan`` over (b, l, d, n) tensors), with the gate and softplus."""
    from mambapy.pscan import pscan
    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    dt = F.softplus(dt) if delta_softplus else dt
    dt, x = dt.transpose(1, 2), u.transpose(1, 2)  # (b, l, d)
    hs = pscan(torch.exp(dt.unsqueeze(-1) * A), (dt * x).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2))
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x  # (b, l, d)
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)


def implementations(device):
    """name -> scan function, for what this machine has."""
    impls = {}
    landed = landed_scan()
    if landed is not None:
        impls['landed'] = landed
    impls['torch'] = scan_mod.selective_scan_torch
    if device == 'cpu' and probe('dvmsr_mma.ops.scan_lanes') is not None:
        from dvmsr_mma.ops.scan_lanes import selective_scan_cpu
        impls['numba'] = selective_scan_cpu
    if device == 'cuda' and probe('selective_scan_cuda') is not None:
        impls['kernel'] = selective_scan
    if probe('mambapy') is not None:
        impls['mambapy'] = mambapy_scan
    return impls


def make(b, d, l, n, device, grad):
    """Inputs as DVMSR's mixer passes them: x, dt before bias and softplus, A < 0, B, C, D, z, dt bias."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(b, d, l, generator=g), torch.randn(b, d, l, generator=g) * 0.5,
          -torch.rand(d, n, generator=g) - 0.1, torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g),
          torch.randn(d, generator=g), torch.randn(b, d, l, generator=g), torch.randn(d, generator=g) * 0.5 - 2]
    return [x.to(device).requires_grad_(grad) for x in xs]


def best_time(fn, repeats, device='cpu'):
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


def time_scan(impl, b, d, l, n, device, backward, repeats):
    xs = make(b, d, l, n, device, backward)

    def call():
        if backward:
            impl(*xs, delta_softplus=True).sum().backward()
        else:
            with torch.no_grad():
                impl(*xs, delta_softplus=True)
    call()  # warm-up: compilation, page faults
    return best_time(call, repeats, device)


def report(title, times, reference='landed'):
    ref = times.get(reference)
    cells = [f'{name} {t:7.3f}s' + (f' ({ref / t:4.1f}x)' if ref and name != reference else '')
             for name, t in times.items()]
    print(f'{title}: ' + '  '.join(cells), flush=True)


PEAK_RSS_CHILD = """
import sys
sys.path.insert(0, {here!r})
import torch, bench_scan
impl = bench_scan.implementations('cpu')[{name!r}]

def status_kb(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))

xs = bench_scan.make({b}, {d}, {l}, {n}, 'cpu', {grad})
torch.set_grad_enabled({grad})
impl(*[x[..., :64].detach().requires_grad_({grad}) if x.dim() == 3 else x for x in xs],
     delta_softplus=True)  # warm-up (and compilation)
before = status_kb('VmRSS')
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset the peak (VmHWM) to the current RSS, so import-time peaks do not hide the forward's
y = impl(*xs, delta_softplus=True)
print((status_kb('VmHWM') - before) / 1024 - y.numel() * y.element_size() / 2**20)
"""


def transient_mb_child(name, b, d, l, n, grad):
    """Peak resident memory (MB) one forward adds beyond its output, in a fresh process; ``grad``: inputs that
    require grad (what a forward keeps for the backward counts, as it stays until then)."""
    code = PEAK_RSS_CHILD.format(here=os.path.dirname(os.path.abspath(__file__)), name=name, b=b, d=d, l=l, n=n,
                                 grad=grad)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 16))  # large blocks go back to the OS at their free
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def busy_processes(count=2):
    """``count`` CPU-bound processes for the duration (a shared server, DataLoader workers, a parallel test run)."""
    procs = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(count)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def dvmsr_forward_time(impl, size, repeats):
    """DVMSR x4 (released size) forward on a size x size LR image with the scan ``impl``."""
    torch.manual_seed(0)
    net = DVMSR().eval()
    x = torch.rand(1, 3, size, size)
    saved = scan_mod.selective_scan_torch
    scan_mod.selective_scan_torch = impl  # the PyTorch path, forced below, calls it
    try:
        with torch.no_grad(), force_torch_ops():
            net(x[..., :16, :16])
            return best_time(lambda: net(x), repeats)
    finally:
        scan_mod.selective_scan_torch = saved


def dvmsr_load_ratio(impl):
    """(quiet, under load) DVMSR x4 128x128 forward times with ``impl``."""
    quiet = dvmsr_forward_time(impl, 128, 3)
    with busy_processes(2):
        return quiet, dvmsr_forward_time(impl, 128, 3)


def dvmsr_load_ratio_child(spincount):
    """``dvmsr_load_ratio`` of the numba path in a fresh process with ``GOMP_SPINCOUNT=spincount``."""
    env = dict(os.environ, GOMP_SPINCOUNT=str(spincount))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--dvmsr-load-child'], env=env,
                         capture_output=True, text=True, check=True)
    quiet, loaded = map(float, out.stdout.split())
    return quiet, loaded


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='targets only; no grid, no landed run under load')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dvmsr-load-child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dvmsr_load_child:
        print(*dvmsr_load_ratio(implementations('cpu')['numba']))
        return
    device = args.device
    impls = implementations(device)
    print(f'device={device} threads={torch.get_num_threads()} paths={", ".join(impls)} '
          f'GOMP_SPINCOUNT={os.environ.get("GOMP_SPINCOUNT")}'
          + ('' if 'landed' in impls else f' (no git history: landed {LANDED} not measured)'))
    n = 16
    fast = {name: impls[name] for name in ('landed', 'torch', 'numba', 'kernel') if name in impls}

    print('\n== scan, called as DVMSR calls it (D, z, delta_bias, softplus), n=16 ==')
    long = dict(fast, **({'mambapy': impls['mambapy']} if 'mambapy' in impls and device == 'cpu' else {}))
    report('fwd     b=1 d=120 l=65536', {k: time_scan(f, 1, 120, 65536, n, device, False, 3) for k, f in long.items()})
    both = dict(fast, **({'mambapy': impls['mambapy']} if 'mambapy' in impls else {}))
    report('fwd+bwd b=4 d=120 l=4096 ', {k: time_scan(f, 4, 120, 4096, n, device, True, 5) for k, f in both.items()})
    if device == 'cpu':
        for grad in (False, True):
            mem = {k: transient_mb_child(k, 1, 120, 65536, n, grad) for k in long}
            ref = mem.get('landed')
            print(f'transient memory beyond y (31.5 MB), fwd b=1 d=120 l=65536, {"grad" if grad else "no grad"}: '
                  + '  '.join(f'{k} {mb:.1f} MB' + (f' ({mb / ref:.2f}x)' if ref and k != 'landed' else '')
                              for k, mb in mem.items()), flush=True)

    if not args.quick:
        print('\n== grid (b=1, n=16) ==')
        grid = dict(fast, loop=scan_mod.selective_scan_step_loop)
        for d in (120, 384):
            for backward in (False, True):
                times = {k: time_scan(f, 1, d, 4096, n, device, backward, 1 if k == 'loop' else 3)
                         for k, f in grid.items()}
                report(f'{"fwd+bwd" if backward else "fwd    "} d={d:3d} l=4096', times)

    if device == 'cpu':
        print('\n== under load: the scan alone (fwd b=1 d=120 l=16384, as in DVMSR x4 at 128x128) ==')
        scans = {k: impls[k] for k in ('landed', 'numba') if k in impls}
        quiet = {k: time_scan(f, 1, 120, 16384, n, device, False, 5) for k, f in scans.items()}
        with busy_processes(2):
            loaded = {k: time_scan(f, 1, 120, 16384, n, device, False, 5) for k, f in scans.items()}
        report('quiet     ', quiet)
        report('under load', loaded)
        print('under load / quiet: ' + '  '.join(f'{k} {loaded[k] / quiet[k]:.1f}x' for k in loaded))

        print('\n== DVMSR x4 (60 channels, 4 RSSB) forward, no grad ==')
        nets = {k: impls[k] for k in ('landed', 'torch', 'numba') if k in impls}
        report('LR 256x256 quiet     ', {k: dvmsr_forward_time(f, 256, 3) for k, f in nets.items()})
        quiet = {k: dvmsr_forward_time(f, 128, 3) for k, f in nets.items()}
        report('LR 128x128 quiet     ', quiet)
        with busy_processes(2):
            loaded = {k: dvmsr_forward_time(f, 128, 1 if k != 'numba' else 3) for k, f in nets.items()
                      if not (args.quick and k != 'numba')}
        report('LR 128x128 under load', loaded)
        print('under load / quiet: ' + '  '.join(f'{k} {loaded[k] / quiet[k]:.1f}x' for k in loaded))
        if 'numba' in nets:
            default_quiet, default_loaded = dvmsr_load_ratio_child(300000)
            print(f'numba, libgomp default spin (GOMP_SPINCOUNT=300000, child process): quiet {default_quiet:.3f} s, '
                  f'under load {default_loaded:.3f} s, {default_loaded / default_quiet:.1f}x')


if __name__ == '__main__':
    main()
