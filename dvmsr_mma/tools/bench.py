"""Parameters, FLOPs (selective scan and causal conv included), runtime and memory of a network.

FLOPs use fvcore's convention, the one SR papers (and DVMSR's 20.17 G) quote: one multiply-add = 1 FLOP.
``torch.utils.flop_counter.FlopCounterMode`` counts matmuls and convolutions as 2 per multiply-add, so its total
is halved. That part is what fvcore alone reports (``flops_fvcore``): fvcore has no handle for the
``selective_scan_fn`` / ``causal_conv1d_fn`` CUDA kernels and so counts neither. During counting both ops are
replaced by stubs that return right-shaped tensors (counting is shape-only, and fast) and add:

* selective scan, u (B, D, L), A (D, N): ``9·B·L·D·N`` (+ ``B·D·L`` for the D skip, + ``B·D·L`` for the z
  gate), the count of ``mamba_ssm``'s ``flops_selective_scan_ref`` that VMamba feeds to fvcore:
  exp(Δ·A), Δ·B·u, h = Ā·h + B̄u, y = C·h per step and state element;
* causal depthwise conv1d, x (B, D, L), kernel K: ``B·D·L·K`` multiply-adds.

``flops = flops_fvcore + flops_scan + flops_conv1d``.

``flops_fvcore_fused`` is what fvcore reports on the official code, where the Mamba forward is the fused
``mamba_inner_fn`` autograd Function: fvcore's tracer sees it as one opaque op, so besides the scan and the conv
it also misses ``x_proj``, ``dt_proj`` and ``out_proj`` (per token and direction: d_inner·(dt_rank+2N),
dt_rank·d_inner; once: d_inner·d_model). For the released DVMSR at 256x256 this is the paper's "20.17 G" figure.
"""
import contextlib
import resource
import statistics
import sys
import time
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn


def parse_size(size: str) -> Tuple[int, int]:
    """'256x256' or '256' -> (h, w)."""
    from dvmsr_mma.utils.errors import OptionError
    try:
        parts = [int(v) for v in str(size).lower().split('x')]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise OptionError(f'--size: expected HxW like 256x256, got {size!r}')
    return parts[0], parts[1]


@contextlib.contextmanager
def _counting_stubs(counts: Dict[str, int]):
    """Swap ``selective_scan`` / ``causal_conv1d`` (and their token-major forms, which the mixer calls where the scan
    runs numba) in every loaded ``dvmsr_mma.archs`` module for counters."""

    def scan_stub(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *a, **k):
        b, d, l = u.shape
        n = A.shape[-1]
        counts['scan'] += 9 * b * l * d * n + (b * d * l if D is not None else 0) + (b * d * l if z is not None else 0)
        return torch.zeros_like(u)

    def conv_stub(x, weight, bias=None, activation=None, *a, **k):
        b, d, l = x.shape
        counts['conv1d'] += b * d * l * weight.shape[-1]
        return x.clone()

    def scan_tokens_stub(u, delta, A, B, C, D=None, z=None, *a, **k):
        scan_stub(u.transpose(1, 2), delta, A, B, C, D, z)
        return torch.zeros_like(u)

    def conv_tokens_stub(x, weight, *a, **k):
        conv_stub(x.transpose(1, 2), weight)
        return x.clone()

    stubs = (('selective_scan', scan_stub), ('causal_conv1d', conv_stub), ('selective_scan_tokens', scan_tokens_stub),
             ('causal_conv1d_tokens', conv_tokens_stub))
    saved = []
    for name, mod in list(sys.modules.items()):
        if not name.startswith('dvmsr_mma.archs') or mod is None:
            continue
        for attr, stub in stubs:
            if callable(getattr(mod, attr, None)):
                saved.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, stub)
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


@torch.no_grad()
def count_flops(net: nn.Module, size: Tuple[int, int], channels: int = 3) -> Dict[str, int]:
    """FLOPs of one forward on a (1, channels, h, w) input; see the module docstring for the convention."""
    from torch.utils.flop_counter import FlopCounterMode
    counts = {'scan': 0, 'conv1d': 0}
    p = next(net.parameters())
    x = torch.rand(1, channels, *size, device=p.device, dtype=p.dtype)
    hidden = [0]

    def mixer_hook(mod, inputs, _):  # linears inside the fused mamba_inner_fn, (b, l, d_model) in
        tokens = inputs[0].shape[0] * inputs[0].shape[1]
        dirs = 2 if getattr(mod, 'bimamba_type', 'none') == 'v2' else 1
        hidden[0] += tokens * (dirs * mod.d_inner * (2 * mod.dt_rank + 2 * mod.d_state) + mod.d_inner * mod.d_model)

    handles = [m.register_forward_hook(mixer_hook) for m in net.modules()
               if all(hasattr(m, a) for a in ('d_inner', 'dt_rank', 'd_state', 'd_model', 'x_proj'))]
    try:
        with _counting_stubs(counts), FlopCounterMode(display=False) as fc:
            net(x)
    finally:
        for h in handles:
            h.remove()
    fv = fc.get_total_flops() // 2  # multiply-add = 2 in FlopCounterMode, 1 in fvcore
    return {'flops': fv + counts['scan'] + counts['conv1d'], 'flops_fvcore': fv, 'flops_scan': counts['scan'],
            'flops_conv1d': counts['conv1d'], 'flops_fvcore_fused': fv - hidden[0]}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@torch.no_grad()
def time_forward(net: nn.Module, size: Tuple[int, int], runs: int = 10, warmup: int = 2,
                 channels: int = 3) -> Dict[str, Any]:
    """Median forward time over ``runs`` warm runs (CUDA events on GPU, wall clock on CPU) and peak memory:
    ``torch.cuda.max_memory_allocated`` on GPU; on CPU the process peak RSS and how much the runs raised it."""
    p = next(net.parameters())
    x = torch.rand(1, channels, *size, device=p.device, dtype=p.dtype)
    cuda = p.device.type == 'cuda'
    rss0 = _peak_rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        net(x)
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            net(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - t0) * 1000)
    out = {'runtime_ms': statistics.median(times), 'runs': runs}
    if cuda:
        out['memory_mb'] = torch.cuda.max_memory_allocated() / 2**20
    else:
        rss1 = _peak_rss_mb()
        out.update(peak_rss_mb=rss1, peak_rss_delta_mb=rss1 - rss0)
    return out


def psnr_on(net: nn.Module, scale: int, dataset_dir: str, device: Optional[str] = None) -> Dict[str, Any]:
    """Mean Y-PSNR (crop_border=scale) over ``dataset_dir``/HR vs SR of ``LR_bicubic/X<s>/<name>x<s>.<ext>``
    (or the same name as the HR file)."""
    import os

    from basicsr.metrics import calculate_psnr

    from dvmsr_mma.tools.infer import SRInferencer, read_image
    hr_dir, lr_dir = os.path.join(dataset_dir, 'HR'), os.path.join(dataset_dir, 'LR_bicubic', f'X{scale}')
    if not os.path.isdir(hr_dir) or not os.path.isdir(lr_dir):
        raise FileNotFoundError(f'--psnr-on: expected {hr_dir} and {lr_dir}')
    inferencer = SRInferencer(net, scale=scale, device=device)
    lr_files = {os.path.splitext(n)[0]: n for n in os.listdir(lr_dir)}
    values = []
    for name in sorted(os.listdir(hr_dir)):
        stem = os.path.splitext(name)[0]
        lr = lr_files.get(f'{stem}x{scale}') or lr_files.get(stem)
        if lr is None:
            raise FileNotFoundError(f'--psnr-on: no LR image for {name} in {lr_dir}')
        hr = read_image(os.path.join(hr_dir, name))
        sr = inferencer.enhance(read_image(os.path.join(lr_dir, lr)))
        peak = 65535. if hr.dtype.itemsize == 2 else 255.
        h, w = sr.shape[:2]
        values.append(calculate_psnr(sr.astype('float64') * 255 / peak, hr[:h, :w].astype('float64') * 255 / peak,
                                     crop_border=scale, test_y_channel=True))
    return {'psnr_y': sum(values) / len(values), 'psnr_images': len(values)}


def benchmark(model: Any, scale: Optional[int] = None, size=(256, 256), device: Optional[str] = None,
              runs: int = 10, warmup: int = 2, flops: bool = True, psnr_dir: Optional[str] = None,
              weights: Optional[str] = None) -> Dict[str, Any]:
    """Everything ``basicsr bench`` prints, as a dict. ``model``: nn.Module, option file/dict or registry name, or
    None with the ``weights`` of a DVMSR or MMA network (built from their shapes)."""
    from dvmsr_mma.tools.infer import build_network, load_network
    from dvmsr_mma.tools.weights import load_weights
    if isinstance(size, str):
        size = parse_size(size)
    if isinstance(model, nn.Module):
        net, arch = model, type(model).__name__
        scale = scale or getattr(model, 'upscale', None)
    elif weights and (model is None or not model.endswith(('.yml', '.yaml'))):  # the checkpoint may describe itself
        net, scale = load_network(model, scale, weights)
        arch, weights = model or type(net).__name__, None
    else:
        is_opt = not isinstance(model, str) or model.endswith(('.yml', '.yaml'))
        net, scale, pretrain = build_network(opt=model if is_opt else None, arch=None if is_opt else model,
                                             scale=scale)
        arch = model if isinstance(model, str) and not is_opt else type(net).__name__  # MMA_T builds an MMA
        weights = weights or (pretrain if psnr_dir else None)
    if weights:
        load_weights(net, weights)
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    net = net.eval().to(dev)
    result = {'arch': arch, 'scale': scale, 'size': f'{size[0]}x{size[1]}', 'device': str(dev),
              'params': sum(p.numel() for p in net.parameters())}
    if flops:
        result.update(count_flops(net, size))
    result.update(time_forward(net, size, runs=runs, warmup=warmup))
    if psnr_dir:
        result.update(psnr_on(net, scale, psnr_dir, device=str(dev)))
    return result


def format_table(result: Dict[str, Any]) -> str:
    rows = []
    for key, value in result.items():
        if key.startswith('flops'):
            value = f'{value / 1e9:.3f} G'
        elif key == 'params':
            value = f'{value:,} ({value / 1e6:.3f} M)'
        elif isinstance(value, float):
            value = f'{value:.2f}'
        rows.append(f'{key:<18} {value}')
    return '\n'.join(rows)
