"""The networks on the CUDA kernel path, on CPU: upstream's real wrappers (the oldest and newest mamba-ssm and
causal-conv1d releases claimed) over strict stand-ins of the compiled modules (tests/kernel_standins.py).

The kernel path is forced (``DVMSR_MMA_OPS=kernel``), so an input a kernel would refuse is an error here, not a
silent fallback; every case is compared with the PyTorch path, values and parameter gradients.
"""
import os
import sys

import pytest
import torch
from kernel_standins import UPSTREAM_PAIRS, load_upstream, upstream_paths

from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mma_arch import MMA_B, MMA_T
from dvmsr_mma.ops import cuda_kernels, dispatch, force_torch_ops
from dvmsr_mma.utils.errors import OptionError

NETWORKS = {
    # widths whose d_inner is not a multiple of 8 (20, 12) next to the released ones (120, 96, 384)
    'dvmsr60': lambda: DVMSR(embed_dim=60, depths=[1], upscale=2, drop_path_rate=0.),
    'dvmsr10': lambda: DVMSR(embed_dim=10, depths=[1, 1], upscale=3, drop_path_rate=0.),
    'dvmsr6': lambda: DVMSR(embed_dim=6, depths=[1], upscale=2, drop_path_rate=0.),
    'mma_t': lambda: MMA_T(upscale=2, num_block=1),
    'mma_b': lambda: MMA_B(upscale=2, num_block=1),
}
# mode -> (whole-model dtype, autocast dtype, tolerance on values, on gradients)
MODES = {
    # measured worst: 6e-8 / 1.2e-7 in fp32, 5e-4 / 8.5e-4 in the low precisions
    'fp32': (torch.float32, None, 1e-5, 1e-5),
    'autocast_bf16': (torch.float32, torch.bfloat16, 2e-3, 3e-3),
    'autocast_fp16': (torch.float32, torch.float16, 2e-3, 3e-3),
    'bf16': (torch.bfloat16, None, 2e-3, 3e-3),
    'fp16': (torch.float16, None, 2e-3, 3e-3),
}


@pytest.fixture(params=UPSTREAM_PAIRS, ids=lambda p: f'mamba-ssm{p[0]}-causal-conv1d{p[1]}')
def upstream(request, fresh_dispatch):
    """Upstream's wrappers of one release pair over the stand-ins; the kernel path forced for CPU tensors.
    Returns the stand-in compiled modules (their ``calls`` say what ran)."""
    mamba, conv = request.param
    if not all(os.path.isdir(p) for p in upstream_paths(mamba, conv)):
        message = f'upstream wrappers not installed in {os.path.dirname(upstream_paths(mamba, conv)[0])} (make install)'
        if os.environ.get('DVMSR_MMA_REQUIRE_UPSTREAM'):
            pytest.fail(message)
        pytest.skip(message)
    try:
        modules = load_upstream(mamba, conv)
    except Exception as err:  # e.g. causal-conv1d >= 1.5.2 writes `torch.Tensor | None`, which needs Python 3.10
        pytest.skip(f'mamba-ssm {mamba} / causal-conv1d {conv} do not import here: {type(err).__name__}: {err}')
    for name, module in modules.items():
        fresh_dispatch.setitem(sys.modules, name, module)
    fresh_dispatch.setattr(cuda_kernels, 'KERNEL_DEVICES', ['cpu'])
    wide = modules['selective_scan_cuda'].uint64_offsets
    fresh_dispatch.setattr(cuda_kernels, '_mamba_has_64bit_offsets', lambda: wide)
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'kernel')
    scan, conv_module = modules['selective_scan_cuda'], modules['causal_conv1d_cuda']
    scan.calls.clear()
    conv_module.calls.clear()
    return scan, conv_module


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _run(net, x, autocast_dtype):
    """Output and parameter gradients of a forward + backward."""
    net.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = net(x)
    out.float().square().mean().backward()
    return out.detach().float(), [p.grad.float() for p in net.parameters()]


def _compare(net, x, autocast_dtype, tol_out, tol_grad, standins):
    scan, conv = standins
    out, grads = _run(net, x, autocast_dtype)
    assert scan.calls.count('fwd') and scan.calls.count('bwd') and conv.calls.count('bwd'), (scan.calls, conv.calls)
    with force_torch_ops():
        ref, ref_grads = _run(net, x, autocast_dtype)
    assert _rel(out, ref) < tol_out
    # all parameter gradients as one vector: a wrong gradient of any tensor the kernels return shows at O(1)
    assert _rel(torch.cat([g.flatten() for g in grads]), torch.cat([r.flatten() for r in ref_grads])) < tol_grad


@pytest.mark.parametrize('mode', list(MODES))
@pytest.mark.parametrize('name', list(NETWORKS))
def test_networks_on_the_kernel_path(upstream, name, mode):
    dtype, autocast_dtype, tol_out, tol_grad = MODES[mode]
    torch.manual_seed(0)
    net = NETWORKS[name]().to(dtype)
    x = torch.rand(2, 3, 5, 7, dtype=dtype)
    _compare(net, x, autocast_dtype, tol_out, tol_grad, upstream)


@pytest.mark.parametrize('case', ['channels_last', 'batch1_odd', 'checkpoint'])
def test_layouts_and_checkpointing_on_the_kernel_path(upstream, case):
    torch.manual_seed(1)
    net = DVMSR(embed_dim=10, depths=[1], upscale=2, drop_path_rate=0., use_checkpoint=case == 'checkpoint')
    x = torch.rand(1 if case == 'batch1_odd' else 2, 3, 9, 4 if case == 'batch1_odd' else 6)
    if case == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
        net = net.to(memory_format=torch.channels_last)
    net.train()
    _compare(net, x, None, 1e-5, 1e-5, upstream)


def test_mma_channels_last_and_checkpoint_on_the_kernel_path(upstream):
    torch.manual_seed(2)
    net = MMA_T(upscale=2, num_block=1, num_feat=30, use_checkpoint=True).to(memory_format=torch.channels_last)
    net.train()
    x = torch.rand(2, 3, 7, 5).contiguous(memory_format=torch.channels_last)
    _compare(net, x, None, 1e-5, 1e-5, upstream)


@pytest.mark.parametrize('name', ['dvmsr10', 'mma_t'])
def test_an_empty_batch_never_reaches_the_kernels(upstream, fresh_dispatch, name):
    """A batch of 0 images: the kernels would launch an empty grid (an error on a GPU). Forced, the kernel path
    is refused in one line; under auto the batch runs on the next path and gives the empty result."""
    scan, conv = upstream
    net = NETWORKS[name]()
    x = torch.rand(0, 3, 13, 17)
    with pytest.raises(OptionError, match=r'^DVMSR_MMA_OPS=kernel: causal_conv1d cannot use the CUDA kernel '
                                          r'\(causal_conv1d\) path: x \(0, \d+, 221\) has no elements'):
        net(x)
    fresh_dispatch.delenv(dispatch.ENV_OPS)
    assert net(x).shape == (0, 3, 13 * net.upscale, 17 * net.upscale)
    assert scan.calls == conv.calls == []
