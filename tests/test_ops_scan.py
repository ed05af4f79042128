"""selective_scan: PyTorch path vs an independent float64 step-by-step reference."""
import sys

import pytest
import torch

from dvmsr_mma.ops import cuda_kernels, force_torch_ops, ops_path, selective_scan

scan_mod = sys.modules['dvmsr_mma.ops.scan_torch']


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """float64, one step at a time, written from the recurrence (not from the module under test)."""
    u, delta, A, B, C = (x.double() for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    b, d, l = u.shape

    def groups(x):  # (b, g, n, l); a time-invariant (d, n) as one group per channel
        return x[None, :, :, None].expand(b, d, x.shape[1], l) if x.dim() == 2 else x[:, None] if x.dim() == 3 else x

    B, C = groups(B), groups(C)
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(l):
        Bt = B[..., t].repeat_interleave(d // B.shape[1], 1)  # (b, d, n)
        Ct = C[..., t].repeat_interleave(d // C.shape[1], 1)
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * u[:, :, t, None] * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * z.double() * torch.sigmoid(z.double())
    return y


def make_inputs(b, d, n, l, groups, with_d, with_z, with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, l, generator=g)
    delta = torch.rand(b, d, l, generator=g) * 0.6 - 0.1
    A = -(torch.rand(d, n, generator=g) + 0.1)
    shape = (b, n, l) if groups == 0 else (b, groups, n, l)
    B = torch.randn(*shape, generator=g)
    C = torch.randn(*shape, generator=g)
    D = torch.randn(d, generator=g) if with_d else None
    z = torch.randn(b, d, l, generator=g) if with_z else None
    bias = torch.randn(d, generator=g) * 0.3 if with_bias else None
    return [u, delta, A, B, C, D, z, bias]


# Which optional inputs are present, with or without softplus: none, all, and two mixes.
OPTIONAL_CASES = pytest.mark.parametrize('with_d,with_z,with_bias,softplus', [
    (False, False, False, False), (True, True, True, True), (True, False, True, False), (False, True, False, True)])


def case_inputs(l, groups, with_d, with_z, with_bias, softplus, seed=0):
    """``make_inputs(2, 4, 3, l, ...)`` for one case of OPTIONAL_CASES (delta made positive without softplus)."""
    inputs = make_inputs(2, 4, 3, l, groups, with_d, with_z, with_bias, seed=seed)
    if not softplus:
        inputs[1] = inputs[1].abs()
    return inputs


def rel_err(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-12)).item()


NAMES = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']


@pytest.mark.parametrize('l', [1, 7, 37, 129])
@pytest.mark.parametrize('groups', [0, 2])
@OPTIONAL_CASES
def test_values_and_grads_match_reference(l, groups, with_d, with_z, with_bias, softplus):
    inputs = case_inputs(l, groups, with_d, with_z, with_bias, softplus)
    for x in inputs:
        if x is not None:
            x.requires_grad_(True)
    with force_torch_ops():
        out = selective_scan(*inputs, delta_softplus=softplus)
    ref = reference_scan(*inputs, delta_softplus=softplus)
    assert out.dtype == torch.float32 and out.shape == (2, 4, l)
    assert rel_err(out, ref) < 1e-4
    assert_grads_match(out, ref, inputs)


def assert_grads_match(out, ref, inputs):
    """The gradient of every input (None: absent) through ``out`` equals the one through the float64 ``ref``."""
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    active = [(name, x) for name, x in zip(NAMES, inputs) if x is not None]
    grads = torch.autograd.grad(out, [x for _, x in active], grad_out)
    ref_grads = torch.autograd.grad(ref, [x for _, x in active], grad_out.double())
    for (name, _), g, rg in zip(active, grads, ref_grads):
        assert g.shape == rg.shape, name
        if rg.norm() < 1e-12:  # e.g. dA at l=1: the state before the first step is zero
            assert g.abs().max() < 1e-6, name
        else:
            assert rel_err(g, rg) < 1e-3, name


def check_scan_against_reference(scan, inputs, softplus):
    """``scan`` (selective_scan's signature) on ``inputs``: values and every gradient against the float64 reference,
    the output in u's dtype and shape; returns the output."""
    for x in inputs:
        if x is not None:
            x.requires_grad_(True)
    out = scan(*inputs, delta_softplus=softplus)
    ref = reference_scan(*inputs, delta_softplus=softplus)
    assert out.dtype == inputs[0].dtype and out.shape == inputs[0].shape
    assert rel_err(out, ref) < 1e-4
    assert_grads_match(out, ref, inputs)
    return out


def check_scan_close_to_torch_path(scan):
    """``scan`` against the PyTorch path at fp32 (a longer sequence than the reference cases)."""
    inputs = make_inputs(2, 6, 16, 500, 0, True, True, True, seed=6)
    with torch.no_grad():
        fast = scan(*inputs, delta_softplus=True)
        with force_torch_ops():
            slow = selective_scan(*inputs, delta_softplus=True)
    assert (fast - slow).abs().max() < 1e-5 * slow.abs().max()


def check_scan_half_input(scan):
    """bf16 u, delta, z: the output comes back in bf16, close to the float64 reference."""
    inputs = make_inputs(1, 4, 3, 20, 0, True, True, False)
    inputs = [x.to(torch.bfloat16) if x is not None and x.dim() == 3 else x for x in inputs]
    out = scan(*inputs)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), reference_scan(*inputs)) < 2e-2


def check_scan_nan_as_torch(scan):
    """A NaN in A makes NaN exactly where the PyTorch path does: the exp of NaN must not come out as a number."""
    inputs = make_inputs(1, 2, 3, 9, 0, False, False, False)
    inputs[2][1, 0] = float('nan')
    with torch.no_grad():
        out = scan(*inputs)
        with force_torch_ops():
            ref = selective_scan(*inputs)
    assert torch.equal(out.isnan(), ref.isnan()) and out[0, 1].isnan().all() and not out[0, 0].isnan().any()


def test_long_sequence_many_chunks_and_small_backward_groups(monkeypatch):
    monkeypatch.setattr(scan_mod, 'BACKWARD_GROUP_ELEMENTS', 1)  # one chunk per backward group
    inputs = make_inputs(3, 6, 4, 301, 3, True, True, True, seed=3)
    for x in inputs:
        x.requires_grad_(True)
    out = scan_mod.selective_scan_torch(*inputs, delta_softplus=True)
    ref = reference_scan(*inputs, delta_softplus=True)
    assert rel_err(out, ref) < 1e-4
    grads = torch.autograd.grad(out.sum(), inputs)
    ref_grads = torch.autograd.grad(ref.sum(), inputs)
    for name, g, rg in zip(NAMES, grads, ref_grads):
        assert rel_err(g, rg) < 1e-3, name


def test_half_input_returns_input_dtype():
    check_scan_half_input(scan_mod.selective_scan_torch)


def test_no_grad_forward_does_not_keep_state_per_step():
    """A long no-grad forward gives the reference's last outputs (chunk carries are right far out)."""
    inputs = make_inputs(1, 2, 2, 2000, 0, False, False, False, seed=5)
    inputs[1] = inputs[1].abs() * 0.05
    with torch.no_grad():
        out = scan_mod.selective_scan_torch(*inputs)
    assert rel_err(out, reference_scan(*inputs)) < 1e-4


@pytest.mark.cuda
def test_torch_path_matches_kernel_on_cuda():
    if cuda_kernels.import_problem('selective_scan'):
        pytest.skip(cuda_kernels.import_problem('selective_scan'))
    inputs = [x.cuda() if x is not None else None for x in make_inputs(2, 8, 4, 300, 2, True, True, True)]
    for x in inputs:
        x.requires_grad_(True)
    out_k = selective_scan(*inputs, delta_softplus=True)
    grads_k = torch.autograd.grad(out_k.sum(), inputs)
    with force_torch_ops():
        out_t = selective_scan(*inputs, delta_softplus=True)
    grads_t = torch.autograd.grad(out_t.sum(), inputs)
    assert rel_err(out_t, out_k.double()) < 1e-4
    for name, gt, gk in zip(NAMES, grads_t, grads_k):
        assert rel_err(gt, gk.double()) < 1e-3, name


@pytest.mark.parametrize('l', [1, 37, 129])
@pytest.mark.parametrize('variable_b,variable_c', [(False, False), (False, True), (True, False)])
def test_time_invariant_b_c_match_reference(l, variable_b, variable_c):
    """B or C of shape (d, n), as mamba_ssm accepts: values and every gradient against the float64 reference,
    which sees them broadcast to (b, d, n, l) (one group per channel) by plain autograd ops."""
    b, d, n = 2, 4, 3
    u, delta, A, B, C, D, z, bias = make_inputs(b, d, n, l, 2, True, True, True, seed=l)
    g = torch.Generator().manual_seed(7)
    B = B if variable_b else torch.randn(d, n, generator=g)
    C = C if variable_c else torch.randn(d, n, generator=g)
    inputs = [u, delta, A, B, C, D, z, bias]
    for x in inputs:
        x.requires_grad_(True)

    def per_channel(x):
        if x.dim() == 2:
            return x.double()[None, :, :, None].expand(b, d, n, l)
        return x.double().repeat_interleave(d // x.shape[1], dim=1)

    out = scan_mod.selective_scan_torch(*inputs, delta_softplus=True)
    ref = reference_scan(u, delta, A, per_channel(B), per_channel(C), D, z, bias, delta_softplus=True)
    assert rel_err(out, ref) < 1e-4
    grad_out = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out.double())
    for name, grad, ref_grad in zip(NAMES, grads, ref_grads):
        assert grad.shape == ref_grad.shape, name
        if ref_grad.norm() < 1e-12:
            assert grad.abs().max() < 1e-6, name
        else:
            assert rel_err(grad, ref_grad) < 1e-3, name


@pytest.mark.parametrize('name, shape, message', [
    ('B', (2, 5, 3, 9), 'B must be (6, 3) (time-invariant), (2, 3, 9) or (2, g, 3, 9) with g dividing 6; '
     'got (2, 5, 3, 9)'),
    ('C', (2, 3, 8), 'C must be (6, 3) (time-invariant)'),
    ('A', (6, ), 'A must be (d, n) = (6, n), got (6,)'),
    ('delta', (2, 6, 8), 'delta must have the shape of u (2, 6, 9), got (2, 6, 8)'),
    ('D', (3, ), 'D must be (6,), got (3,)'),
])
def test_bad_shapes_are_one_line(name, shape, message):
    inputs = dict(zip(NAMES, make_inputs(2, 6, 3, 9, 0, True, True, True)))
    inputs[name] = torch.randn(*shape)
    with pytest.raises(ValueError) as err:
        selective_scan(**inputs)
    assert str(err.value).startswith(f'selective_scan: {message}')


def test_return_last_state_refused():
    inputs = make_inputs(1, 2, 2, 5, 0, False, False, False)
    with pytest.raises(NotImplementedError, match='return_last_state is not supported'):
        selective_scan(*inputs, return_last_state=True)


@pytest.mark.parametrize('path', ['torch', 'numba'])
def test_half_dc_with_time_invariant_b_summed_in_fp32(path):
    """fp16, B time-invariant (d, n) in fp32 as the kernel takes it, C time-varying fp16, no z: dC sums d
    channels' contributions, which cancel. Summed in fp32 and rounded once (as upstream's kernel does) it is
    within a few fp16 ulps of float64's; rounding each channel's copy to fp16 first was hundreds of ulps off."""
    if path == 'numba':
        pytest.importorskip('numba')
    b, d, n, l = 2, 64, 4, 24
    g = torch.Generator().manual_seed(4)
    u = torch.randn(b, d, l, generator=g).half().requires_grad_()
    delta = (torch.rand(b, d, l, generator=g) * 0.5).half().requires_grad_()
    A = -(torch.rand(d, n, generator=g) + 0.1)
    B = torch.randn(d, n, generator=g)
    C = torch.randn(b, n, l, generator=g).half().requires_grad_()
    grad_out = torch.randn(b, d, l, generator=g).half()
    with ops_path(path):
        out = selective_scan(u, delta, A, B, C)
    (dC,) = torch.autograd.grad(out, [C], grad_out)
    C64 = C.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(reference_scan(u, delta, A, B, C64), [C64], grad_out.double())
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(2.0 ** -14))) - 10)  # fp16 spacing at ref
    assert dC.dtype == torch.float16
    assert ((dC.double() - ref).abs() / ulp).max() <= 4
