"""The lane-major numba scan (dvmsr_mma.ops.scan_lanes) behind the (b, d, l) ``selective_scan``: values and every
gradient against the float64 step reference of test_ops_scan.py, its inputs read in place, its memory, and results
that do not depend on the thread count."""
import math
import sys

import pytest
import torch
from test_ops_scan import (
    OPTIONAL_CASES,
    case_inputs,
    check_scan_against_reference,
    check_scan_close_to_torch_path,
    check_scan_half_input,
    check_scan_nan_as_torch,
    make_inputs,
    reference_scan,
    rel_err,
)

from dvmsr_mma.ops import selective_scan

numba = pytest.importorskip('numba', reason='the numba CPU scan is optional (pip install numba)')
scan_lanes = pytest.importorskip('dvmsr_mma.ops.scan_lanes')
numba_runtime = sys.modules['dvmsr_mma.ops.numba_runtime']


def check_against_reference(inputs, softplus):
    assert check_scan_against_reference(scan_lanes.selective_scan_cpu, inputs, softplus).is_contiguous()


@pytest.mark.parametrize('l', [1, 7, 64, 65, 200])  # one checkpoint, exactly one block, one step past it, four
@pytest.mark.parametrize('groups', [0, 2])
@OPTIONAL_CASES
def test_values_and_grads_match_reference(l, groups, with_d, with_z, with_bias, softplus):
    check_against_reference(case_inputs(l, groups, with_d, with_z, with_bias, softplus, seed=l), softplus)


@pytest.mark.parametrize('b, d, n, l, groups', [
    (3, 70, 5, 333, 0),  # several tasks per batch (their B/C gradient slices summed) and many blocks
    (2, 24, 16, 130, 3),  # exactly one vector of states, groups
    (1, 9, 17, 100, 0),  # two vectors of states, the second mostly padding
])
def test_many_tasks_blocks_and_state_vectors(b, d, n, l, groups):
    check_against_reference(make_inputs(b, d, n, l, groups, True, True, True, seed=3), True)


@pytest.mark.parametrize('which', ['B', 'both'])
def test_time_invariant_b_c(which):
    """B (or B and C) (d, n), the same at every step: values, and its gradient summed over batch and time."""
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 3, 70, 0, True, True, True, seed=4)
    g = torch.Generator().manual_seed(5)
    B = torch.randn(4, 3, generator=g, requires_grad=True)
    if which == 'both':
        C = torch.randn(4, 3, generator=g, requires_grad=True)
    check_against_reference([u, delta, A, B, C, D, z, bias], True)


def test_matches_torch_path_closely():
    check_scan_close_to_torch_path(scan_lanes.selective_scan_cpu)


def test_half_input_returns_input_dtype():
    check_scan_half_input(scan_lanes.selective_scan_cpu)


def test_nan_propagates_as_in_torch():
    check_scan_nan_as_torch(scan_lanes.selective_scan_cpu)


def strided_inputs(b, d, n, l, seed):
    """u and z as the halves of one (b, 2d, l) tensor, delta a channel slice of a wider one, B and C state slices
    of one (b, 2n + 3, l) tensor: unit time stride, other strides not those of contiguous tensors."""
    g = torch.Generator().manual_seed(seed)
    xz = torch.randn(b, 2 * d, l, generator=g)
    wide_delta = torch.rand(b, d + 5, l, generator=g) * 0.6 - 0.1
    x_dbl = torch.randn(b, 2 * n + 3, l, generator=g)
    leaves = [xz, wide_delta, -(torch.rand(d, n, generator=g) + 0.1), x_dbl, torch.randn(d, generator=g),
              torch.randn(d, generator=g) * 0.3]
    for x in leaves:
        x.requires_grad_(True)
    xz, wide_delta, A, x_dbl, D, bias = leaves
    views = [xz[:, :d], wide_delta[:, 2:d + 2], A, x_dbl[:, 3:3 + n], x_dbl[:, 3 + n:], D, xz[:, d:], bias]
    return leaves, views


def test_strided_views_read_in_place_match_reference():
    leaves, views = strided_inputs(2, 20, 16, 150, seed=7)
    out = scan_lanes.selective_scan_cpu(*views, delta_softplus=True)
    ref = reference_scan(*views, delta_softplus=True)
    assert rel_err(out, ref) < 1e-5
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * w).sum(), leaves)
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        assert rel_err(g, rg) < 1e-4, i


def allocated_bytes(fn):
    """Bytes allocated while ``fn`` runs (every aten allocation, the frees not subtracted), and the shapes of the
    tensors it copied."""
    with torch.profiler.profile(profile_memory=True, record_shapes=True) as prof:
        fn()
    events = prof.events()
    allocated = sum(e.cpu_memory_usage for e in events
                    if e.name in ('aten::empty', 'aten::empty_strided') and e.cpu_memory_usage > 0)
    copies = [e.input_shapes for e in events if e.name == 'aten::copy_']
    return allocated, copies


def test_forward_allocates_only_y_and_checkpoints():
    """The forward reads its fp32 inputs where they are (strided views included) and allocates y and the states
    before every CHECKPOINT_STEPS steps, nothing more: at l = 65536 (b = 1, d = 120, n = 16) that is 31.5 MB +
    7.9 MB."""
    b, d, n, l = 1, 40, 16, 1000
    _, views = strided_inputs(b, d, n, l, seed=2)
    y_bytes = 4 * b * d * l
    checkpoint_bytes = 4 * b * d * n * math.ceil(l / scan_lanes.CHECKPOINT_STEPS)
    allocated, copies = allocated_bytes(lambda: scan_lanes.selective_scan_cpu(*views, delta_softplus=True))
    assert y_bytes + checkpoint_bytes <= allocated < y_bytes + checkpoint_bytes + 4096
    assert not copies, copies
    with torch.no_grad():
        allocated, copies = allocated_bytes(lambda: scan_lanes.selective_scan_cpu(*views, delta_softplus=True))
    assert y_bytes <= allocated < y_bytes + 4096 and not copies


def test_backward_memory_is_the_gradients_and_bounded_slices():
    """The backward allocates the gradients and one (b, g, n, l) slice of B and C gradient per task of a (batch,
    group), never a state per step."""
    b, d, n, l = 2, 40, 16, 500
    inputs = make_inputs(b, d, n, l, 0, True, True, True, seed=1)
    for x in inputs:
        x.requires_grad_(True)
    out = scan_lanes.selective_scan_cpu(*inputs, delta_softplus=True)
    gout = torch.ones_like(out)
    allocated, _ = allocated_bytes(lambda: out.backward(gout))
    slices = -(-d // scan_lanes.LANES)
    # u, delta and z gradients; the B and C slices and their sums; the float64 sums of A, D and delta_bias
    assert allocated < 4 * (3 * b * d * l + 2 * (slices + 1) * b * n * l) + 8 * b * d * (n + 2) + 65536
    assert allocated < 4 * b * d * n * l / 2  # far from a state per step


def test_backward_lanes_bound_the_gradient_slices(monkeypatch):
    monkeypatch.setattr(scan_lanes, 'PARTIAL_ELEMENTS', 2 * 16 * 300)
    assert scan_lanes._backward_lanes(1, 120, 1, 16, 300) == 60  # two slices
    assert scan_lanes._backward_lanes(1, 120, 1, 16, 10) == scan_lanes.LANES
    check_against_reference(make_inputs(1, 30, 16, 300, 0, True, True, True, seed=9), True)


def values_and_grads(inputs, threads):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = scan_lanes.selective_scan_cpu(*inputs, delta_softplus=True)
        return (out, *torch.autograd.grad(out.square().sum(), inputs))
    finally:
        torch.set_num_threads(previous)


def test_results_do_not_depend_on_thread_count():
    """Tasks are cut by shape, never by threads, and the B/C gradient slices added in task order: values and every
    gradient bit for bit at 1, 2 and 3 threads."""
    inputs = make_inputs(2, 50, 16, 300, 0, True, True, True, seed=8)
    for x in inputs:
        x.requires_grad_(True)
    results = [values_and_grads(inputs, threads) for threads in (1, 2, 3)]
    for result in results[1:]:
        for i, (a, b) in enumerate(zip(result, results[0])):
            assert torch.equal(a, b), i


def test_openmp_team_and_python_threads_give_the_same_bits(monkeypatch):
    """Where torch runs on GNU OpenMP, the kernels run on torch's own team (task entries); values and gradients are
    those of the Python thread pool, bit for bit, and the team is what ran them."""
    if numba_runtime._torch_openmp() is None:
        pytest.skip('torch does not run on GNU OpenMP here; the Python pool is the only path')
    inputs = make_inputs(2, 50, 16, 300, 0, True, True, True, seed=8)
    for x in inputs:
        x.requires_grad_(True)
    calls = []
    run = numba_runtime._torch_openmp()
    monkeypatch.setattr(numba_runtime, '_set_up', True)
    monkeypatch.setattr(numba_runtime, '_openmp_run', lambda *args: calls.append(args[2]) or run(*args))
    team = values_and_grads(inputs, 2)
    assert len(calls) == 2 and set(calls) == {2}  # forward and backward, on two threads
    monkeypatch.setattr(numba_runtime, '_openmp_run', None)
    pool = values_and_grads(inputs, 2)
    for i, (a, b) in enumerate(zip(team, pool)):
        assert torch.equal(a, b), i


def test_kernels_follow_the_runtime_source():
    """The kernels close over numba_runtime's source key (numba's cache index hashes it): a change to the shared
    helpers recompiles them instead of loading stale code."""
    for entry in scan_lanes._kernels(16):
        kernel = entry.__wrapped__.__globals__['kernel']  # the task kernel the entry calls
        for function in (entry.__wrapped__, kernel.py_func):
            assert numba_runtime.SOURCE_KEY in [c.cell_contents for c in function.__closure__]


def test_dispatch_takes_the_lane_kernel(monkeypatch):
    """``selective_scan`` on CPU tensors, with numba, runs this module's scan (no transposed copies)."""
    calls = []
    real = scan_lanes.selective_scan_cpu
    monkeypatch.setattr(scan_lanes, 'selective_scan_cpu', lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = make_inputs(1, 4, 3, 20, 0, True, True, True)
    with torch.no_grad():
        selective_scan(*inputs, delta_softplus=True)
    assert calls == [1]


@pytest.mark.parametrize('b, l', [(2, 0), (0, 5)])
def test_tensors_without_elements(b, l):
    """No steps or no batch: an empty y, and zero gradients of the right shapes."""
    inputs = make_inputs(b, 4, 3, l, 0, True, True, True)
    for x in inputs:
        x.requires_grad_(True)
    out = scan_lanes.selective_scan_cpu(*inputs, delta_softplus=True)
    assert out.shape == (b, 4, l)
    for x, g in zip(inputs, torch.autograd.grad(out.sum(), inputs)):
        assert g.shape == x.shape and not g.any()
