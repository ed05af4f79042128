"""The numba CPU scan (dvmsr_mma.ops.scan_cpu) against the float64 step reference of test_ops_scan.py, its exp,
its threads, and the dispatch between it and the PyTorch path (which needs no numba)."""
import sys
import threading

import pytest
import torch
from test_ops_scan import NAMES, OPTIONAL_CASES, assert_grads_match, case_inputs, make_inputs, reference_scan, rel_err

from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.ops import force_torch_ops, selective_scan

numba = pytest.importorskip('numba', reason='the numba CPU scan is optional (pip install numba)')
scan_cpu = pytest.importorskip('dvmsr_mma.ops.scan_cpu')
numba_runtime = sys.modules['dvmsr_mma.ops.numba_runtime']
scan_mod = sys.modules['dvmsr_mma.ops.selective_scan']


def check_against_reference(inputs, softplus):
    for x in inputs:
        if x is not None:
            x.requires_grad_(True)
    out = scan_cpu.selective_scan_cpu(*inputs, delta_softplus=softplus)
    ref = reference_scan(*inputs, delta_softplus=softplus)
    assert out.dtype == inputs[0].dtype and out.shape == inputs[0].shape
    assert rel_err(out, ref) < 1e-4
    assert_grads_match(out, ref, inputs)


@pytest.mark.parametrize('l', [1, 7, 64, 65, 200])  # one checkpoint, exactly one chunk, one step past it, four
@pytest.mark.parametrize('groups', [0, 2])
@OPTIONAL_CASES
def test_values_and_grads_match_reference(l, groups, with_d, with_z, with_bias, softplus):
    check_against_reference(case_inputs(l, groups, with_d, with_z, with_bias, softplus, seed=l), softplus)


def test_many_lanes_tasks_and_checkpoints():
    """More lanes than tasks and several tasks per batch: every lane and the B/C gradient partials are summed."""
    check_against_reference(make_inputs(3, 10, 5, 333, 5, True, True, True, seed=3), True)


def test_time_invariant_b_c():
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 3, 70, 0, True, True, True, seed=4)
    B_const = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), requires_grad=True)
    out = scan_cpu.selective_scan_cpu(u, delta, A, B_const, C, D, z, bias, True)
    ref = reference_scan(u, delta, A, B_const.double()[None, :, :, None].expand(2, 4, 3, 70), C[:, None], D, z, bias,
                         True)
    assert rel_err(out, ref) < 1e-4
    (g,) = torch.autograd.grad(out.sum(), B_const)
    (rg,) = torch.autograd.grad(ref.sum(), B_const)
    assert rel_err(g, rg) < 1e-3


def test_matches_torch_path_closely():
    inputs = make_inputs(2, 6, 16, 500, 0, True, True, True, seed=6)
    with torch.no_grad():
        fast = scan_cpu.selective_scan_cpu(*inputs, delta_softplus=True)
        with force_torch_ops():
            slow = selective_scan(*inputs, delta_softplus=True)
    assert (fast - slow).abs().max() < 1e-5 * slow.abs().max()


def test_half_input_returns_input_dtype():
    inputs = make_inputs(1, 4, 3, 20, 0, True, True, False)
    inputs = [x.to(torch.bfloat16) if x is not None and x.dim() == 3 else x for x in inputs]
    out = scan_cpu.selective_scan_cpu(*inputs)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), reference_scan(*inputs)) < 2e-2


def test_nan_propagates_as_in_torch():
    inputs = make_inputs(1, 2, 3, 9, 0, False, False, False)
    inputs[2][1, 0] = float('nan')  # one entry of A: the exp of NaN must not come out as a number
    with torch.no_grad():
        out = scan_cpu.selective_scan_cpu(*inputs)
        with force_torch_ops():
            ref = selective_scan(*inputs)
    assert torch.equal(out.isnan(), ref.isnan()) and out[0, 1].isnan().all() and not out[0, 0].isnan().any()


def test_exp_is_torch_exp_to_two_ulp():
    exp = numba.njit(lambda x: numba_runtime.exp32(x))
    x = torch.cat([torch.linspace(-110, 90, 20001), torch.tensor([0., -0., -1e-8, 1e-8, 88.72, -87.34, -103.9])])
    got = torch.tensor([exp(numba.float32(v)) for v in x.tolist()])
    want = torch.exp(x.double()).float()  # correctly rounded
    normal = (want > 1.2e-38) & torch.isfinite(want)
    ulp = (got[normal].view(torch.int32) - want[normal].view(torch.int32)).abs()
    assert ulp.max() <= 2
    assert torch.equal(got[~normal & (x < 0)] <= 1.2e-38, torch.ones_like(got[~normal & (x < 0)], dtype=torch.bool))
    assert torch.isinf(got[x > 88.8]).all() and (got[x < -104] == 0).all()
    assert exp(numba.float32(float('nan'))) != exp(numba.float32(float('nan')))  # NaN


def test_threads_bounded_by_torch_num_threads():
    names = []

    def record(i):
        names.append(threading.current_thread().name)

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        numba_runtime.run_tasks([(i, ) for i in range(8)], record)
        assert set(names) == {threading.current_thread().name}  # inline, no pool
        names.clear()
        torch.set_num_threads(2)
        numba_runtime.run_tasks([(i, ) for i in range(8)], record)
        assert len(names) == 8 and len(set(names)) <= 2 and all(n.startswith('dvmsr_mma_scan') for n in names)
    finally:
        torch.set_num_threads(previous)


def test_results_do_not_depend_on_thread_count():
    inputs = make_inputs(1, 8, 4, 150, 0, True, True, True, seed=8)
    for x in inputs:
        x.requires_grad_(True)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = scan_cpu.selective_scan_cpu(*inputs, delta_softplus=True)
            results.append((out, torch.autograd.grad(out.sum(), inputs)))
    finally:
        torch.set_num_threads(previous)
    (out1, grads1), (out2, grads2) = results
    assert torch.equal(out1, out2)  # lanes are independent: bit for bit
    for name, g1, g2 in zip(NAMES, grads1, grads2):  # B/C partials are summed in another grouping
        assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-6), name


def test_dvmsr_forward_same_on_both_paths():
    torch.manual_seed(0)
    net = DVMSR(embed_dim=12, depths=[1, 1], upscale=2, drop_path_rate=0.).eval()
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        fast = net(x)
        with force_torch_ops():
            slow = net(x)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_backward_partial_buffers_are_bounded(monkeypatch):
    """The B/C gradient buffers (one per task part) shrink to the bound; results stay exact."""
    monkeypatch.setattr(scan_cpu, 'BACKWARD_PARTIAL_ELEMENTS', 1)  # one part: a single buffer
    sizes = []
    real_zeros = torch.Tensor.new_zeros

    def recording_new_zeros(self, *size, **kwargs):
        sizes.append(tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size)
        return real_zeros(self, *size, **kwargs)

    monkeypatch.setattr(torch.Tensor, 'new_zeros', recording_new_zeros)
    check_against_reference(make_inputs(2, 8, 3, 70, 0, True, True, True, seed=9), True)
    assert sizes and all(size[1] == 1 for size in sizes)  # (b, parts, g, l, N) with parts = 1
