"""The Triton selective scan (dvmsr_mma/ops/scan_triton.py) against the float64 step reference, and its dispatch.

Without a GPU the real kernels run in Triton's interpreter on CPU tensors: ``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` before torch (which imports triton) when the machine has no NVIDIA GPU. On a GPU machine
the same tests run the compiled kernels on CUDA tensors. Small blocks (16 steps, chunks of 2 blocks) make short
sequences cross several blocks and chunks.
"""

import pytest
import torch
from test_ops_scan import NAMES, OPTIONAL_CASES, assert_grads_match, case_inputs, make_inputs, reference_scan, rel_err

import dvmsr_mma.ops.dispatch as dispatch
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.ops import cuda_kernels, force_torch_ops, selective_scan

pytest.importorskip('triton', reason='triton is not installed (it comes with PyTorch\'s Linux CUDA wheels)')
scan_triton = pytest.importorskip('dvmsr_mma.ops.scan_triton')

if scan_triton.version_problem():  # the dispatch never takes the path then (tests/test_ops_dispatch.py)
    pytest.skip(scan_triton.version_problem(), allow_module_level=True)
if scan_triton.INTERPRETED:
    DEVICE = 'cpu'
elif torch.cuda.is_available():
    DEVICE = 'cuda'
else:
    pytest.skip('no GPU and TRITON_INTERPRET is not 1 (tests/conftest.py sets it on machines without an NVIDIA GPU)',
                allow_module_level=True)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(scan_triton, 'FWD_BLOCK_T', 16)
    monkeypatch.setattr(scan_triton, 'BWD_BLOCK_T', 16)
    monkeypatch.setattr(scan_triton, 'CHUNK_BLOCKS', 2)  # states saved every 32 steps


def on_device(inputs):
    return [x.to(DEVICE).requires_grad_(True) if x is not None else None for x in inputs]


def check(inputs, softplus, tol=1e-4):
    """Values and every gradient of the Triton scan against the float64 reference (on the CPU inputs)."""
    cpu = [x.requires_grad_(True) if x is not None else None for x in inputs]
    dev = on_device([x.detach() if x is not None else None for x in inputs])
    out = scan_triton.selective_scan_triton(*dev, delta_softplus=softplus)
    ref = reference_scan(*cpu, delta_softplus=softplus)
    assert out.dtype == inputs[0].dtype and out.shape == inputs[0].shape
    assert rel_err(out.cpu(), ref) < tol
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    active = [(name, x, y) for name, x, y in zip(NAMES, dev, cpu) if x is not None]
    grads = torch.autograd.grad(out, [x for _, x, _ in active], grad_out.to(DEVICE, out.dtype))
    ref_grads = torch.autograd.grad(ref, [y for _, _, y in active], grad_out.double())
    for (name, _, _), g, rg in zip(active, grads, ref_grads):
        assert g.shape == rg.shape and g.dtype == dict(zip(NAMES, inputs))[name].dtype, name
        if rg.norm() < 1e-12:
            assert g.abs().max() < 1e-6, name
        else:
            assert rel_err(g.cpu(), rg) < tol * 10, name


@pytest.mark.parametrize('l', [1, 7, 70])  # one step; one partial block; 5 blocks in 3 chunks, the last partial
@pytest.mark.parametrize('groups', [0, 2])
@OPTIONAL_CASES
def test_values_and_grads_match_reference(l, groups, with_d, with_z, with_bias, softplus):
    check(case_inputs(l, groups, with_d, with_z, with_bias, softplus, seed=l), softplus)


@pytest.mark.parametrize('d, groups', [(6, 2), (8, 4), (8, 1), (5, 5)])  # 1, 2, 4 (capped) and 1 channels per program
def test_channel_blocks_and_groups(d, groups):
    check(make_inputs(2, d, 16, 40, groups, True, True, True, seed=d), True)


@pytest.mark.parametrize('deterministic', [False, True])
def test_b_c_gradients_atomic_or_deterministic(deterministic):
    """Atomic adds by default (as the CUDA kernel); per-program rows summed by PyTorch under
    ``torch.use_deterministic_algorithms``, then bit-identical from run to run."""
    inputs = make_inputs(2, 8, 4, 50, 0, True, True, True, seed=11)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        check(inputs, True)
        if deterministic:
            runs = []
            for _ in range(2):
                dev = on_device([x.detach() for x in inputs])
                out = scan_triton.selective_scan_triton(*dev, delta_softplus=True)
                runs.append(torch.autograd.grad(out.sum(), [dev[3], dev[4]]))
            assert all(torch.equal(a, b) for a, b in zip(*runs))
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize('variable_b,variable_c', [(False, False), (True, False)])
def test_time_invariant_b_c(variable_b, variable_c):
    b, d, n, l = 2, 4, 3, 37
    u, delta, A, B, C, D, z, bias = make_inputs(b, d, n, l, 0, True, True, True, seed=4)
    g = torch.Generator().manual_seed(5)
    B = B if variable_b else torch.randn(d, n, generator=g)
    C = C if variable_c else torch.randn(d, n, generator=g)
    dev = on_device([u, delta, A, B, C, D, z, bias])
    out = scan_triton.selective_scan_triton(*dev, delta_softplus=True)
    cpu = [x.requires_grad_(True) for x in (u, delta, A, B, C, D, z, bias)]

    def per_channel(x):
        return x.double()[None, :, :, None].expand(b, d, n, l) if x.dim() == 2 else x.double()[:, None].expand(
            b, d, n, l)

    ref = reference_scan(cpu[0], cpu[1], cpu[2], per_channel(cpu[3]), per_channel(cpu[4]), *cpu[5:],
                         delta_softplus=True)
    assert rel_err(out.cpu(), ref) < 1e-4
    grads = torch.autograd.grad(out.sum(), dev)
    ref_grads = torch.autograd.grad(ref.sum(), cpu)
    for name, grad, ref_grad in zip(NAMES, grads, ref_grads):
        assert grad.shape == ref_grad.shape and rel_err(grad.cpu(), ref_grad) < 1e-3, name


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_fp32_state(dtype):
    """fp16/bf16 u, delta, z, B, C: the state and sums stay fp32, outputs and gradients come in the input dtype."""
    inputs = make_inputs(1, 4, 3, 40, 0, True, True, True, seed=2)
    inputs = [x.to(dtype) if x is not None and x.dim() >= 3 else x for x in inputs]
    check(inputs, True, tol=2e-2)


def test_saved_states_every_chunk_and_none_without_grad():
    inputs = on_device(make_inputs(1, 4, 3, 70, 0, True, True, True))
    out = scan_triton.selective_scan_triton(*inputs, delta_softplus=True)
    states = out.grad_fn.saved_tensors[-1]
    assert tuple(states.shape) == (1, 4, 4, 3)  # (b, d, n padded to 4, ceil(70 / 32) chunks)
    with torch.no_grad():
        out = scan_triton.selective_scan_triton(*inputs, delta_softplus=True)
    assert out.grad_fn is None


def test_long_sequence_against_torch_path():
    """Default block sizes, many chunks: the forward and gradients agree with the exact PyTorch path."""
    scan_triton.FWD_BLOCK_T, scan_triton.BWD_BLOCK_T, scan_triton.CHUNK_BLOCKS = 128, 64, 16  # reset by the fixture
    inputs = make_inputs(1, 2, 16, 2100 if DEVICE == 'cuda' else 1100, 0, True, True, True, seed=8)
    inputs[1] = inputs[1] * 0.1
    dev = on_device(inputs)
    out = scan_triton.selective_scan_triton(*dev, delta_softplus=True)
    cpu = [x.requires_grad_(True) for x in inputs]
    with force_torch_ops():
        ref = selective_scan(*cpu, delta_softplus=True)
    assert rel_err(out.cpu(), ref.double()) < 1e-4
    grads = torch.autograd.grad(out.sum(), dev)
    ref_grads = torch.autograd.grad(ref.sum(), cpu)
    for name, grad, ref_grad in zip(NAMES, grads, ref_grads):
        assert rel_err(grad.cpu(), ref_grad.double()) < 1e-3, name


def test_nan_propagates():
    inputs = make_inputs(1, 2, 3, 9, 0, False, False, False)
    inputs[2][1, 0] = float('nan')
    with torch.no_grad():
        out = scan_triton.selective_scan_triton(*[x.to(DEVICE) if x is not None else None for x in inputs]).cpu()
    assert out[0, 1].isnan().all() and not out[0, 0].isnan().any()


class _Launches:
    """Stands in for a Triton kernel: records ``kernel[grid](*args)`` launches, computes nothing."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.grids.append(grid)


def test_launch_grid_holds_for_the_longest_sequences(monkeypatch):
    """l past 4.2M tokens (a 2048 x 2100 LR image): the grid is (b, d) for the forward and (b, d / BD) for the
    backward, whatever l, within CUDA's grid.y cap of 65535; meta tensors, so nothing is allocated."""
    fwd, bwd = _Launches(), _Launches()
    monkeypatch.setattr(scan_triton, '_fwd_kernel', fwd)
    monkeypatch.setattr(scan_triton, '_bwd_kernel', bwd)
    b, d, n, l = 2, 120, 16, 2048 * 2100
    u, delta = (torch.empty(b, d, l, device='meta', requires_grad=True) for _ in range(2))
    A = torch.empty(d, n, device='meta', requires_grad=True)
    B, C = (torch.empty(b, n, l, device='meta', requires_grad=True) for _ in range(2))
    out = scan_triton.selective_scan_triton(u, delta, A, B, C, None, None, None, True)
    out.sum().backward()
    assert fwd.grids == [(b, d)]
    assert bwd.grids == [(b, d // scan_triton.BWD_BLOCK_D)]
    assert all(g[1] <= 65535 for g in fwd.grids + bwd.grids)


# ------------------------------------------------------------------------------------------------ through the dispatch
@pytest.mark.skipif(DEVICE != 'cpu', reason='the interpreter runs CPU tensors')
def test_forced_triton_runs_through_selective_scan(fresh_dispatch):
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'triton')
    inputs = make_inputs(1, 4, 3, 20, 0, True, True, True, seed=3)
    for x in inputs:
        x.requires_grad_(True)
    calls = []
    real = scan_triton.selective_scan_triton
    fresh_dispatch.setattr(scan_triton, 'selective_scan_triton', lambda *a: calls.append(1) or real(*a))
    out = selective_scan(*inputs, delta_softplus=True)
    assert calls == [1]
    assert_grads_match(out, reference_scan(*inputs, delta_softplus=True), inputs)


def test_tiny_dvmsr_forward_and_backward_match_torch_path(fresh_dispatch):
    torch.manual_seed(0)
    net = DVMSR(embed_dim=8, depths=[1], upscale=2, drop_path_rate=0.).to(DEVICE)
    x = torch.rand(1, 3, 6, 5, device=DEVICE)
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'triton')
    out = net(x)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'torch')
    ref = net(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    assert torch.allclose(out, ref, atol=1e-5)
    for g, rg in zip(grads, ref_grads):
        assert torch.allclose(g, rg, atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
def test_triton_kernel_and_torch_agree_on_cuda(monkeypatch):
    """All three CUDA paths at a DVMSR-like size, values and gradients (the kernel where it imports)."""
    if DEVICE != 'cuda':
        pytest.skip('Triton runs in its interpreter here (TRITON_INTERPRET=1)')
    scan_triton.FWD_BLOCK_T, scan_triton.BWD_BLOCK_T, scan_triton.CHUNK_BLOCKS = 128, 64, 16
    inputs = on_device(make_inputs(2, 120, 16, 4100, 0, True, True, True, seed=12))

    def run():
        out = selective_scan(*inputs, delta_softplus=True)
        return [out] + list(torch.autograd.grad(out.sum(), inputs))

    results = {}
    for path in ('triton', 'torch') + (() if cuda_kernels.import_problem('selective_scan') else ('kernel', )):
        monkeypatch.setenv(dispatch.ENV_OPS, path)
        results[path] = run()
    for path, values in results.items():
        for name, got, want in zip(['out'] + NAMES, values, results['torch']):
            assert rel_err(got, want.double()) < 1e-3, (path, name)


AOT = r'''
import inspect, json, os, re, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import dvmsr_mma.ops.scan_triton as st

ptxas = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')
flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
chunk = st.BWD_BLOCK_T * st.CHUNK_BLOCKS
kernels = [(st._fwd_kernel, dict(flags, SAVE=True, NP=16, T=st.FWD_BLOCK_T, CHUNK=chunk), st.FWD_NUM_WARPS),
           (st._bwd_kernel, dict(flags, ATOMIC=True, NP=16, BD=st.BWD_BLOCK_D, T=st.BWD_BLOCK_T, CB=st.CHUNK_BLOCKS),
            st.BWD_NUM_WARPS)]
report = []
for arch in (80, 90):
    for kernel, consts, warps in kernels:
        names = inspect.signature(kernel.fn).parameters
        signature = {p: 'constexpr' if p in consts else '*fp32' if p.endswith('_ptr') else 'i32' for p in names}
        compiled = triton.compile(ASTSource(kernel, signature, consts), target=GPUTarget('cuda', arch, 32),
                                  options={'num_warps': warps})
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, 'k.ptx')
            open(ptx, 'w').write(compiled.asm['ptx'])
            gpu = re.search(r'\.target\s+(sm_\w+)', compiled.asm['ptx']).group(1)  # sm_90a for 90
            out = subprocess.run([ptxas, '-v', '--gpu-name', gpu, ptx, '-o', os.path.join(tmp, 'k.cubin')],
                                 capture_output=True, text=True, check=True).stderr
        narrow = [line.strip() for line in compiled.asm['ttir'].splitlines()
                  if 'tt.addptr' in line and re.search(r'i32>? loc', line)]
        report.append(dict(arch=arch, kernel=kernel.fn.__name__, info=out, narrow_offsets=narrow))
print(json.dumps(report))
'''


def test_kernels_compile_for_cuda_without_spills_and_with_64_bit_offsets(tmp_path):
    """Without a GPU: compile both kernels, at the default block sizes, for sm_80 and sm_90 with Triton's own
    ptxas. Catches what the interpreter does not check (typing of loop-carried values, lowering of the scans),
    register spills, and any pointer offset computed in 32 bits (the integer arguments are given as i32, as
    Triton types them below 2**31, so an i32 offset would be a product that can wrap for l > 4.2M)."""
    import json
    import os
    import re
    import subprocess
    import sys

    import triton
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')):
        pytest.skip("this triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(tmp_path)
    out = subprocess.run([sys.executable, '-c', AOT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report) == 4
    for entry in report:
        spills = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', entry['info'])
        assert spills and spills.groups() == ('0', '0'), entry
        assert entry['narrow_offsets'] == [], entry['narrow_offsets']
