"""The numba CPU scan (dvmsr_mma.ops.scan_cpu) against the float64 step reference of test_ops_scan.py, through the
(b, d, l) API and token-major in place (both directions), its exp, its threads, and the dispatch between it and the
PyTorch path (which needs no numba)."""
import os
import subprocess
import sys
import threading

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

from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mamba_block import Mamba
from dvmsr_mma.ops import force_torch_ops
from dvmsr_mma.ops.scan_inputs import checked_b_c

numba = pytest.importorskip('numba', reason='the numba CPU scan is optional (pip install numba)')
scan_cpu = pytest.importorskip('dvmsr_mma.ops.scan_cpu')
llvm_binding = pytest.importorskip('llvmlite.binding')
numba_runtime = sys.modules['dvmsr_mma.ops.numba_runtime']
scan_mod = sys.modules['dvmsr_mma.ops.scan_torch']


def tokens_on_bdl(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The token-major kernel on transposed views of (b, d, l) inputs (B and C (b, n, l), (b, g, n, l) or
    time-invariant), so the reference cases of test_ops_scan.py run on it; y back as (b, d, l)."""
    B, C = checked_b_c(u, delta, A, B, C, D, z, delta_bias)
    B4, C4 = (x.unsqueeze(1) if x.dim() == 3 else x for x in (B, C))  # (b, g, n, l)
    y = scan_cpu.selective_scan_tokens_cpu(u.transpose(1, 2), delta.transpose(1, 2), A, B4.permute(0, 3, 1, 2),
                                           C4.permute(0, 3, 1, 2), D, None if z is None else z.transpose(1, 2),
                                           delta_bias, delta_softplus)
    return y.transpose(1, 2)


def check_against_reference(inputs, softplus):
    check_scan_against_reference(tokens_on_bdl, inputs, softplus)


@pytest.mark.parametrize('l', [1, 7, 64, 65, 200])  # one checkpoint, exactly one chunk, one step past it, four
@pytest.mark.parametrize('groups', [0, 2])
@OPTIONAL_CASES
def test_values_and_grads_match_reference(l, groups, with_d, with_z, with_bias, softplus):
    check_against_reference(case_inputs(l, groups, with_d, with_z, with_bias, softplus, seed=l), softplus)


def test_many_parts_and_checkpoints():
    """Several parts per batch and many checkpoint chunks: every part and the B/C gradient partials are summed."""
    check_against_reference(make_inputs(3, 70, 5, 333, 0, True, True, True, seed=3), True)


def test_time_invariant_b_c():
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 3, 70, 0, True, True, True, seed=4)
    B_const = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), requires_grad=True)
    out = tokens_on_bdl(u, delta, A, B_const, C, D, z, bias, True)
    ref = reference_scan(u, delta, A, B_const.double()[None, :, :, None].expand(2, 4, 3, 70), C[:, None], D, z, bias,
                         True)
    assert rel_err(out, ref) < 1e-4
    (g,) = torch.autograd.grad(out.sum(), B_const)
    (rg,) = torch.autograd.grad(ref.sum(), B_const)
    assert rel_err(g, rg) < 1e-3


def test_matches_torch_path_closely():
    check_scan_close_to_torch_path(tokens_on_bdl)


def test_half_input_returns_input_dtype():
    check_scan_half_input(tokens_on_bdl)


def test_nan_propagates_as_in_torch():
    check_scan_nan_as_torch(tokens_on_bdl)


@pytest.mark.parametrize('scalef', sorted({False, numba_runtime.SCALEF}))
def test_exp_is_torch_exp_to_two_ulp(monkeypatch, scalef):
    """Both forms of 2^k: two exponent fields (any x86-64), vscalefps (AVX-512 hosts)."""
    monkeypatch.setattr(numba_runtime, 'SCALEF', scalef)  # read when a caller compiles
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


def test_mul_add_is_fused_where_the_cpu_has_fma():
    """The state update's multiply-add rounds once: (1 + 2^-13)^2 - (1 + 2^-12) is 2^-26, which a rounded product
    loses."""
    mul_add = numba.njit(lambda a, b, c: numba_runtime.mul_add32(a, b, c))
    a, c = numba.float32(1 + 2**-13), numba.float32(-(1 + 2**-12))
    fused = llvm_binding.get_host_cpu_features().get('fma', False)
    assert mul_add(a, a, c) == (2**-26 if fused else 0.0)
    assert mul_add(numba.float32(3), numba.float32(-2), numba.float32(0.5)) == -5.5


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
        assert len(names) == 8 and len(set(names)) <= 2  # the caller and one pool thread
        assert set(names) <= {threading.current_thread().name} | {n for n in names if n.startswith('dvmsr_mma_scan')}
    finally:
        torch.set_num_threads(previous)


def token_inputs(b, l, d, n, dt_rank, seed, grad=True):
    """The mixer's tensors as it makes them: x and z halves of xz (b, l, 2d), B and C slices of x_dbl
    (b, l, dt_rank + 2n), delta (b, l, d); as leaves, and as the views the scan takes."""
    g = torch.Generator().manual_seed(seed)
    leaves = dict(xz=torch.randn(b, l, 2 * d, generator=g), x_dbl=torch.randn(b, l, dt_rank + 2 * n, generator=g),
                  delta=torch.rand(b, l, d, generator=g) * 0.6 - 0.1, A=-(torch.rand(d, n, generator=g) + 0.1),
                  D=torch.randn(d, generator=g), bias=torch.randn(d, generator=g) * 0.3)
    for x in leaves.values():
        x.requires_grad_(grad)
    return leaves


def token_views(t, d, n, dt_rank):
    x_dbl = t['x_dbl']
    return (t['xz'][..., :d], t['delta'], t['A'], x_dbl[..., dt_rank:dt_rank + n], x_dbl[..., dt_rank + n:], t['D'],
            t['xz'][..., d:], t['bias'])


def reference_tokens(u, delta, A, B, C, D, z, bias, reverse):
    """The float64 step reference on (b, d, l) views of token-major inputs, flipped for a reverse scan."""
    def channels_first(x):
        return (x.flip(1) if reverse else x).transpose(1, 2)

    y = reference_scan(channels_first(u), channels_first(delta), A, channels_first(B), channels_first(C), D,
                       channels_first(z), bias, True).transpose(1, 2)
    return y.flip(1) if reverse else y


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('b, l, d, n, dt_rank', [(2, 77, 24, 16, 3), (1, 33, 120, 16, 4), (3, 1, 20, 5, 2),
                                                 (1, 70, 96, 17, 3)])
def test_token_major_views_in_place_match_reference(b, l, d, n, dt_rank, reverse):
    """Halves of xz and slices of x_dbl, read in place (strides as the matmuls leave them), both directions:
    values and every gradient against the float64 step reference; output (b, l, d), contiguous."""
    t = token_inputs(b, l, d, n, dt_rank, seed=l)
    views = token_views(t, d, n, dt_rank)
    out = scan_cpu.selective_scan_tokens_cpu(*views, delta_softplus=True, reverse=reverse)
    ref = reference_tokens(*views, reverse)
    assert out.shape == (b, l, d) and out.is_contiguous()
    assert rel_err(out, ref) < 1e-5
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * w).sum(), list(t.values()))
    ref_grads = torch.autograd.grad((ref * w).sum(), list(t.values()))
    for name, g, rg in zip(t, grads, ref_grads):
        assert rel_err(g, rg) < 1e-4, name


def test_token_major_reads_without_copies(monkeypatch):
    """The fp32 views the mixer passes reach the kernel as they are: no copy of a (b, l, ...) tensor in the forward
    (only A (d, n) is transposed, and that is small)."""
    t = token_inputs(2, 40, 24, 16, 3, seed=2, grad=False)
    with torch.profiler.profile(record_shapes=True) as prof:
        scan_cpu.selective_scan_tokens_cpu(*token_views(t, 24, 16, 3), delta_softplus=True)
    copies = [e.input_shapes for e in prof.key_averages(group_by_input_shape=True) if e.key == 'aten::copy_']
    assert copies and not [shapes for shapes in copies if len(shapes[0]) >= 3], copies


@pytest.mark.parametrize('bimamba_type', ['none', 'v2'])
@pytest.mark.parametrize('bias', [False, True])
def test_mixer_makes_x_and_z_alike_with_and_without_autograd(bimamba_type, bias):
    """The token-major mixer makes x and z with two matmuls under autograd and with one without: the same output
    either way, and in_proj's gradients those of the PyTorch path ((b, d, l), one matmul)."""
    torch.manual_seed(0)
    mixer = Mamba(16, bimamba_type=bimamba_type, bias=bias)
    h = torch.randn(2, 30, 16)
    params = [mixer.in_proj.weight] + ([mixer.in_proj.bias] if bias else [])
    with torch.no_grad():
        quiet = mixer(h)
    out = mixer(h)
    assert torch.allclose(out, quiet, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), params)
    with force_torch_ops():
        ref = mixer(h)
    for g, rg in zip(grads, torch.autograd.grad(ref.square().sum(), params)):
        assert rel_err(g, rg) < 1e-4


def test_grouped_and_other_dtypes():
    """B and C with groups (b, l, g, n), and bf16 inputs (converted in, y returned in bf16)."""
    g = torch.Generator().manual_seed(3)
    b, l, d, n, groups = 2, 50, 12, 4, 3
    u, delta, z = (torch.randn(b, l, d, generator=g) * s for s in (1, 0.3, 1))
    A, D, bias = -(torch.rand(d, n, generator=g) + 0.1), torch.randn(d, generator=g), torch.randn(d, generator=g)
    B, C = torch.randn(b, l, groups, n, generator=g), torch.randn(b, l, groups, n, generator=g)
    out = scan_cpu.selective_scan_tokens_cpu(u, delta, A, B, C, D, z, bias, True)
    ref = reference_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), D,
                         z.transpose(1, 2), bias, True).transpose(1, 2)
    assert rel_err(out, ref) < 1e-5
    half = scan_cpu.selective_scan_tokens_cpu(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D,
                                              z.bfloat16(), bias, True)
    assert half.dtype == torch.bfloat16 and rel_err(half.float(), ref) < 3e-2


def test_results_do_not_depend_on_thread_count():
    """Tasks are cut by shape, never by threads: values and every gradient bit for bit at 1, 2 and 3 threads."""
    t = token_inputs(2, 150, 100, 16, 4, seed=8)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = scan_cpu.selective_scan_tokens_cpu(*token_views(t, 100, 16, 4), delta_softplus=True, reverse=True)
            results.append((out, torch.autograd.grad(out.square().sum(), list(t.values()))))
    finally:
        torch.set_num_threads(previous)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        for name, g, g0 in zip(t, grads, results[0][1]):
            assert torch.equal(g, g0), name


def scan_and_conv_grads(t):
    """A reverse scan and a conv, forward and backward, on more tasks than threads."""
    conv_cpu = sys.modules.get('dvmsr_mma.ops.conv_cpu') or pytest.importorskip('dvmsr_mma.ops.conv_cpu')
    out = scan_cpu.selective_scan_tokens_cpu(*token_views(t, 100, 16, 4), delta_softplus=True, reverse=True)
    weight = torch.linspace(-1, 1, 400).view(100, 4).requires_grad_()
    conv = conv_cpu.causal_conv1d_tokens_cpu(t['xz'][..., :100], weight, t['bias'], 'silu', reverse=True)
    loss = out.square().sum() + conv.square().sum()
    return (out, conv, *torch.autograd.grad(loss, [*t.values(), weight]))


def test_openmp_team_and_python_threads_give_the_same_bits(monkeypatch):
    """Where torch runs on GNU OpenMP, the kernels run on torch's own team (run_tasks with a task entry); values and
    gradients are those of the Python thread pool, bit for bit, and the team is what ran them."""
    if numba_runtime._torch_openmp() is None:
        pytest.skip('torch does not run on GNU OpenMP here; the Python pool is the only path')
    t = token_inputs(2, 2100, 100, 16, 4, seed=9)
    previous = torch.get_num_threads()
    calls = []
    run = numba_runtime._torch_openmp()
    monkeypatch.setattr(numba_runtime, '_set_up', True)
    monkeypatch.setattr(numba_runtime, '_openmp_run', lambda *args: calls.append(args[2]) or run(*args))
    try:
        torch.set_num_threads(2)
        team = scan_and_conv_grads(t)
        assert calls and set(calls) == {2}  # scan and conv, forward and backward, on two threads
        monkeypatch.setattr(numba_runtime, '_openmp_run', None)
        pool = scan_and_conv_grads(t)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(team, pool):
        assert torch.equal(a, b)


def test_memory_stays_below_one_state_per_step(monkeypatch):
    """The backward keeps one state per CHECKPOINT_STEPS steps: no allocation is larger than an activation
    (b * l * d), let alone the b * l * d * n of every state."""
    b, l, d, n = 1, 512, 32, 16
    t = token_inputs(b, l, d, n, 2, seed=4)
    sizes = []
    real = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, 'new_empty', lambda self, *s, **k: sizes.append(torch.Size(
        s[0] if len(s) == 1 and isinstance(s[0], (tuple, list)) else s).numel()) or real(self, *s, **k))
    out = scan_cpu.selective_scan_tokens_cpu(*token_views(t, d, n, 2), delta_softplus=True)
    out.sum().backward()
    assert sizes and max(sizes) <= b * l * d
    assert b * l * d * n // scan_cpu.CHECKPOINT_STEPS in sizes  # the checkpoints


def test_parts_are_cache_line_aligned_and_bounded():
    for d in (1, 5, 20, 64, 65, 96, 120, 360, 384, 1000):
        for width in (scan_cpu.FORWARD_WIDTH, scan_cpu.BACKWARD_WIDTH):
            cut = numba_runtime.parts(d, width)
            assert [s for s, _ in cut] == sorted({s for s, _ in cut}) and sum(w for _, w in cut) == d
            assert all(0 < w <= width and s % numba_runtime.ALIGN == 0 for s, w in cut)
            assert len(cut) == -(-d // width)


def test_kernels_follow_the_runtime_source():
    """numba caches a kernel by its own file; the kernels close over numba_runtime's source key, which numba's
    cache index hashes, so a change to the shared helpers recompiles them instead of loading stale code."""
    for entry in scan_cpu._kernels(16):
        kernel = entry.__wrapped__.__globals__['kernel']  # the part kernel the entry calls
        for function in (entry.__wrapped__, kernel.py_func):
            assert numba_runtime.SOURCE_KEY in [c.cell_contents for c in function.__closure__]


def test_dvmsr_forward_same_on_both_paths():
    torch.manual_seed(0)
    net = DVMSR(embed_dim=12, depths=[1, 1], upscale=2, drop_path_rate=0.).eval()
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        fast = net(x)
        with force_torch_ops():
            slow = net(x)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_a_failing_task_stops_the_call_after_every_thread_is_done():
    done = []

    def task(i):
        if i == 3:
            raise ValueError('task 3')
        done.append(i)

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match='task 3'):
            numba_runtime.run_tasks([(i, ) for i in range(40)], task)
    finally:
        torch.set_num_threads(previous)
    assert 3 not in done and len(done) >= 1


@pytest.mark.parametrize('name, shape, message', [
    ('B', (2, 9, 3), r'B must be \(2, 10, 3\) or \(2, 10, g, 3\) with g dividing 4; got \(2, 9, 3\)'),
    ('delta', (2, 4, 10), r'delta must have the shape of u \(2, 10, 4\), got \(2, 4, 10\)'),
])
def test_token_major_bad_shapes_are_one_line(name, shape, message):
    from dvmsr_mma.ops import selective_scan_tokens
    u, delta, A, B, C, D, z, bias = (x.transpose(1, 2) if x is not None and x.dim() == 3 else x
                                     for x in make_inputs(2, 4, 3, 10, 0, True, True, True))
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)
    args[name] = torch.randn(shape)
    with pytest.raises(ValueError, match='^selective_scan_tokens: ' + message + '$'):
        selective_scan_tokens(**args)


SPIN_PROBE = r'''
import os, sys, time
import torch
cpus = len(os.sched_getaffinity(0))
torch.set_num_threads(cpus)
x = torch.ones(1 << 20)


def busy_fraction():
    """The process's CPU time over wall time across pauses between parallel regions: a worker that spins at the
    barrier burns the pauses too."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(100):
        x.add_(1)
        time.sleep(0.001)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


before = busy_fraction()
from dvmsr_mma.ops.conv_cpu import causal_conv1d_tokens_cpu
causal_conv1d_tokens_cpu(torch.ones(1, 8, 4), torch.ones(4, 4))  # the first kernel call on torch's team
print(before, busy_fraction())
'''


def test_first_kernel_call_stops_openmp_threads_spinning_between_regions():
    """A program that imported torch first has libgomp's default spin (300,000 turns, milliseconds): between torch's
    parallel regions its workers keep a CPU busy. After the first kernel call, libgomp manages more threads than
    there are CPUs (one idle team member, see numba_runtime._throttle_spinning) and its waiting threads sleep after
    100 turns."""
    if numba_runtime._torch_openmp() is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip('needs GNU OpenMP (torch on Linux) and two CPUs')
    env = {k: v for k, v in os.environ.items() if k not in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY', 'OMP_NUM_THREADS')}
    out = subprocess.run([sys.executable, '-c', SPIN_PROBE], env=env, capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert after < 0.6 * before, (before, after)


def test_a_users_wait_policy_is_kept(monkeypatch):
    """With OMP_WAIT_POLICY set, no idle team member is started: the user chose libgomp's behaviour."""
    monkeypatch.setenv('OMP_WAIT_POLICY', 'active')
    names = {t.name for t in threading.enumerate()}
    numba_runtime._throttle_spinning(lambda *args: pytest.fail('a team was started'))
    assert {t.name for t in threading.enumerate()} == names
