"""One prepared GPU check: the ``cuda`` tests, then one table of the CUDA paths (kernel, Triton, PyTorch).

    python benchmarks/gpu_check.py [--skip-tests] [--iters 20]

Prints: the GPU, versions; the result of ``pytest -m cuda`` and of tests/test_ops_scan_triton.py with compiled
Triton; the selective scan (called as DVMSR calls it) forward and forward+backward at DVMSR (d 120) and MMA-B
(d 384) widths, l 4096 and 65536, per path; F.conv1d against the causal-conv1d kernel; DVMSR x4 and MMA-T x2
inference on a 256x256 LR image per path in fp32 and bf16/fp16 autocast, with each path's max difference from
the PyTorch path; a width that is not a multiple of 8 and a 2048x2100 LR forward (4.3M tokens) per path, with
the dispatch's log lines; and ``--iters`` training iterations of DVMSR and MMA-T per path. Meant to finish in a few
minutes on one GPU. The kernel column needs ``pip install .[cuda]`` (mamba_ssm with its compiled extension).
"""
import argparse
import logging
import os
import subprocess
import sys
import time

os.environ.setdefault('TRITON_INTERPRET', '0')  # compiled Triton, whatever the shell says (before torch)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dvmsr_mma  # noqa: E402,F401

# isort: split
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dvmsr_mma.archs.dvmsr_arch import DVMSR  # noqa: E402
from dvmsr_mma.archs.mma_arch import MMA_T  # noqa: E402
from dvmsr_mma.ops import cuda_kernels, dispatch, selective_scan  # noqa: E402


def paths():
    """The CUDA paths this machine has, fastest first."""
    found = [] if cuda_kernels.import_problem('selective_scan') else ['kernel']
    module = dispatch.probe(dispatch.TRITON_MODULE)
    if module is not None and module.version_problem() is None:
        found.append('triton')
    return found + ['torch']


def use(path):
    os.environ[dispatch.ENV_OPS] = path


def cuda_time(fn, repeats=5, warmup=2):
    """Best of ``repeats`` wall times of ``fn`` (synchronised), after ``warmup`` calls (Triton compiles on the
    first)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def scan_inputs(b, d, l, n=16, grad=False):
    g = torch.Generator(device='cuda').manual_seed(0)
    kw = dict(device='cuda', generator=g)
    x = [torch.randn(b, d, l, **kw), torch.rand(b, d, l, **kw) * 0.5 - 3.0, -torch.rand(d, n, **kw) - 0.5,
         torch.randn(b, n, l, **kw), torch.randn(b, n, l, **kw), torch.randn(d, **kw), torch.randn(b, d, l, **kw),
         torch.rand(d, **kw)]
    return [t.requires_grad_(grad) for t in x]


def row(title, cells):
    print(f'{title:<44}' + ''.join(f'{c:>22}' for c in cells), flush=True)


def fmt(seconds, reference):
    return f'{seconds * 1e3:9.2f} ms ({reference / seconds:5.1f}x)'


def scan_table(found):
    print('\n== selective scan (D, z, delta_bias, softplus; n 16; b 1); ratio: PyTorch path / path ==')
    row('case', found)
    for d in (120, 384):
        for l in (4096, 65536):
            for backward in (False, True):
                inputs = scan_inputs(1, d, l, grad=backward)
                times = {}
                for path in found:
                    use(path)

                    def call():
                        out = selective_scan(*inputs, delta_softplus=True)
                        if backward:
                            out.sum().backward()

                    times[path] = cuda_time(call, repeats=3 if path == 'torch' else 10)
                name = f'{"fwd+bwd" if backward else "fwd"} d={d} l={l}'
                row(name, [fmt(times[p], times['torch']) for p in found])
    # differences between paths at one size
    inputs = scan_inputs(2, 120, 4096, grad=True)
    results = {}
    for path in found:
        use(path)
        out = selective_scan(*inputs, delta_softplus=True)
        results[path] = [out.detach()] + list(torch.autograd.grad(out.sum(), inputs))
    names = ['out', 'u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    for path in found:
        diffs = [((a.double() - r.double()).abs().max() / r.double().abs().max()).item()
                 for a, r in zip(results[path], results['torch'])]
        print(f'max |{path} - torch| / max|torch|, b=2 d=120 l=4096: '
              + ', '.join(f'{n} {v:.1e}' for n, v in zip(names, diffs)))


def conv_table():
    print('\n== causal depthwise conv1d (k 4, SiLU), F.conv1d against the causal-conv1d kernel ==')
    from dvmsr_mma.ops import causal_conv1d
    x = torch.randn(1, 240, 65536, device='cuda')
    w, bias = torch.randn(240, 4, device='cuda'), torch.randn(240, device='cuda')
    times = {}
    for path in ('kernel', 'torch'):
        if path == 'kernel' and cuda_kernels.import_problem('causal_conv1d'):
            continue
        use(path)
        times[path] = cuda_time(lambda: causal_conv1d(x, w, bias, activation='silu'), repeats=10)
    print('  '.join(f'{p} {t * 1e3:.3f} ms' for p, t in times.items())
          + (f'  (F.conv1d / kernel {times["torch"] / times["kernel"]:.2f}x)' if 'kernel' in times else
             '  (causal_conv1d kernel not installed)'))


def network_table(found):
    print('\n== inference, LR 256x256, no grad; ratio: PyTorch path / path; diff: max |out - PyTorch out| ==')
    row('network, precision', found)
    torch.manual_seed(0)
    nets = {'DVMSR x4': DVMSR().cuda().eval(), 'MMA-T x2': MMA_T(upscale=2).cuda().eval()}
    x = torch.rand(1, 3, 256, 256, device='cuda')
    for name, net in nets.items():
        for precision in ('fp32', 'bf16', 'fp16'):
            dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(precision)
            times, outs = {}, {}
            for path in found:
                use(path)

                def call():
                    with torch.no_grad(), torch.autocast('cuda', dtype=dtype, enabled=dtype is not None):
                        return net(x)

                outs[path] = call().float()
                times[path] = cuda_time(call, repeats=3)
            cells = [fmt(times[p], times['torch']) + f' d{(outs[p] - outs["torch"]).abs().max().item():.0e}'
                     for p in found]
            row(f'{name}, {precision}', cells)


class _Lines(logging.Handler):
    """Collects the dispatch's INFO lines (which path, and why not the faster ones)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def edge_table(found):
    """The cases a CPU test can only simulate: a width that is not a multiple of 8 (the channel-last conv kernel
    refuses it) and more than 4,194,240 tokens (that kernel's grid.y limit), each path against PyTorch."""
    print('\n== edge cases per path: max |out - PyTorch out|, time; then what the dispatch logged ==')
    handler = _Lines()
    logging.getLogger(dispatch.__name__).addHandler(handler)
    logging.getLogger(dispatch.__name__).setLevel(logging.INFO)
    torch.manual_seed(0)
    cases = (('DVMSR embed_dim 30, 64x64, fwd+bwd', DVMSR(embed_dim=30, drop_path_rate=0.).cuda(), (2, 3, 64, 64),
              True),
             ('DVMSR x4, 2048x2100 LR (4.3M tokens), fwd', DVMSR().cuda().eval(), (1, 3, 2048, 2100), False))
    for name, net, shape, backward in cases:
        x = torch.rand(*shape, device='cuda')
        outs, cells = {}, []
        for path in reversed(found):  # PyTorch first: the reference
            use(path)
            start = time.perf_counter()
            try:
                with torch.set_grad_enabled(backward):
                    out = net(x)
                    if backward:
                        out.square().mean().backward()
                torch.cuda.synchronize()
                outs[path] = out.detach().float()
                diff = (outs[path] - outs['torch']).abs().max().item()
                cells.append(f'{path}: d{diff:.0e} {time.perf_counter() - start:.2f} s')
            except Exception as err:  # the point of the check: report, do not stop
                cells.append(f'{path}: FAILED {type(err).__name__}: {str(err).splitlines()[0][:80]}')
            del out
            torch.cuda.empty_cache()
        print(f'{name}: ' + '; '.join(cells), flush=True)
        del outs, net
    for line in dict.fromkeys(handler.lines):
        print(f'  log: {line}')
    logging.getLogger(dispatch.__name__).removeHandler(handler)


def training_table(found, iters):
    print(f'\n== training, {iters} iterations (Adam, L1, batch 8 of 64x64 LR patches), s per iteration ==')
    row('network', found)
    for name, make, scale in (('DVMSR x4', DVMSR, 4), ('MMA-T x2', lambda: MMA_T(upscale=2), 2)):
        times = {}
        for path in found:
            use(path)
            torch.manual_seed(0)
            net = make().cuda().train()
            opt = torch.optim.Adam(net.parameters(), lr=1e-4)
            lr = torch.rand(8, 3, 64, 64, device='cuda')
            hr = F.interpolate(lr, scale_factor=scale, mode='bicubic')

            def step():
                opt.zero_grad(set_to_none=True)
                loss = F.l1_loss(net(lr), hr)
                loss.backward()
                opt.step()

            step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iters):
                step()
            torch.cuda.synchronize()
            times[path] = (time.perf_counter() - start) / iters
        row(name, [f'{times[p]:8.3f} s ({times["torch"] / times[p]:5.1f}x)' for p in found])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--skip-tests', action='store_true')
    parser.add_argument('--iters', type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('gpu_check: no CUDA device (torch.cuda.is_available() is False)')
    import triton
    versions = f'torch {torch.__version__}, triton {triton.__version__}'
    try:
        import mamba_ssm
        versions += f', mamba_ssm {mamba_ssm.__version__}'
    except Exception:  # not installed, or installed without its extension
        versions += ', mamba_ssm not importable'
    print(f'GPU: {torch.cuda.get_device_name()} ({versions})', flush=True)
    if not args.skip_tests:
        env = dict(os.environ, TRITON_INTERPRET='0')
        for what in (['-m', 'cuda'], ['tests/test_ops_scan_triton.py']):
            result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *what],
                                    cwd=ROOT, env=env, capture_output=True, text=True)
            print(f'pytest {" ".join(what)}: ' + (result.stdout.strip().splitlines() or ['(no output)'])[-1],
                  flush=True)
            if result.returncode:
                print(result.stdout[-4000:], result.stderr[-2000:], sep='\n')
    found = paths()
    print(f'paths: {", ".join(found)}')
    scan_table(found)
    conv_table()
    edge_table(found)
    network_table(found)
    training_table(found, args.iters)


if __name__ == '__main__':
    main()
