"""causal_conv1d: the CPU paths (numba, PyTorch) vs an F.conv1d reference (left padding w - 1), values and grads;
fp16/bf16 against causal-conv1d's own reference and tolerances; unsupported streaming options refused."""
import pytest
import torch
import torch.nn.functional as F

from dvmsr_mma.ops import causal_conv1d, cuda_kernels, force_torch_ops, ops_path

CPU_PATHS = pytest.mark.parametrize('path', ['numba', 'torch'])


def reference_conv(x, weight, bias, activation):
    d, w = weight.shape
    out = F.conv1d(F.pad(x.double(), (w - 1, 0)), weight.double()[:, None], None if bias is None else bias.double(),
                   groups=d)
    return out if activation is None else out * torch.sigmoid(out)


@pytest.mark.parametrize('l', [1, 5, 37])
@pytest.mark.parametrize('w', [2, 3, 4])
@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('activation', [None, 'silu', 'swish'])
@CPU_PATHS
def test_values_and_grads_match_reference(l, w, with_bias, activation, path):
    pytest.importorskip('numba') if path == 'numba' else None
    g = torch.Generator().manual_seed(l * 10 + w)
    x = torch.randn(2, 6, l, generator=g, requires_grad=True)
    weight = torch.randn(6, w, generator=g, requires_grad=True)
    bias = torch.randn(6, generator=g, requires_grad=True) if with_bias else None
    with ops_path(path):
        out = causal_conv1d(x, weight, bias, activation=activation)
    ref = reference_conv(x, weight, bias, activation)
    assert out.shape == x.shape
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)
    params = [p for p in (x, weight, bias) if p is not None]
    go = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, params, go), torch.autograd.grad(ref, params, go.double())):
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5)


def test_is_causal():
    x = torch.randn(1, 3, 10)
    weight = torch.randn(3, 4)
    out = causal_conv1d(x, weight)
    x2 = x.clone()
    x2[..., 6:] += 1.0
    assert torch.equal(causal_conv1d(x2, weight)[..., :6], out[..., :6])
    assert not torch.equal(causal_conv1d(x2, weight)[..., 6:], out[..., 6:])


def upstream_reference(x, weight, bias, activation):
    """causal-conv1d's ``causal_conv1d_ref``: x cast to the weights' dtype (fp32 here), conv, cast back."""
    out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=weight.shape[1] - 1, groups=weight.shape[0])
    out = out[..., :x.shape[-1]]
    return (out if activation is None else F.silu(out)).to(x.dtype)


@pytest.mark.parametrize('itype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('l', [8, 129, 784])
@pytest.mark.parametrize('w', [2, 4])
@CPU_PATHS
def test_half_inputs_accumulate_in_fp32(itype, l, w, path):
    """Upstream's test: fp32 weights and bias, x in fp16/bf16; its tolerances (x and out in itype, weights 1e-3)."""
    pytest.importorskip('numba') if path == 'numba' else None
    rtol, atol = (3e-3, 5e-3) if itype == torch.float16 else (1e-2, 5e-2)
    g = torch.Generator().manual_seed(l + w)
    x = torch.randn(2, 64, l, generator=g).to(itype).requires_grad_()
    weight = torch.randn(64, w, generator=g, requires_grad=True)
    bias = torch.randn(64, generator=g, requires_grad=True)
    with ops_path(path):
        out = causal_conv1d(x, weight, bias, activation='silu')
    ref = upstream_reference(x, weight, bias, 'silu')
    assert out.dtype == itype
    assert torch.allclose(out, ref, rtol=rtol, atol=atol)
    go = torch.randn(out.shape, generator=g).to(itype)
    grads = torch.autograd.grad(out, (x, weight, bias), go)
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), go)
    assert torch.allclose(grads[0], ref_grads[0], rtol=rtol, atol=atol)
    for grad, ref_grad in zip(grads[1:], ref_grads[1:]):
        assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-3)


def test_half_inputs_under_autocast_stay_fp32_inside():
    x = torch.randn(1, 8, 300).bfloat16()
    weight, bias = torch.randn(8, 4), torch.randn(8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = causal_conv1d(x, weight, bias)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, upstream_reference(x, weight, bias, None))


@pytest.mark.parametrize('option', [{'seq_idx': torch.zeros(1, 3, dtype=torch.int32)},
                                    {'initial_states': torch.zeros(1, 2, 1)}, {'return_final_states': True},
                                    {'final_states_out': torch.zeros(1, 2, 1)}])
def test_streaming_options_refused_in_one_line(option):
    with pytest.raises(NotImplementedError, match=f'causal_conv1d: {next(iter(option))} is not supported'):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2), **option)


def test_positional_activation_is_refused_as_upstream_would():
    """Upstream's fourth positional parameter is seq_idx: a call written for causal-conv1d < 1.1 fails clearly."""
    with pytest.raises(NotImplementedError, match='seq_idx is not supported'):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2), None, 'silu')


def test_bad_activation_rejected():
    with pytest.raises(NotImplementedError):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2), activation='relu')


@pytest.mark.cuda
def test_torch_path_matches_kernel_on_cuda():
    if cuda_kernels.import_problem('causal_conv1d'):
        pytest.skip(cuda_kernels.import_problem('causal_conv1d'))
    x = torch.randn(2, 64, 100, device='cuda', requires_grad=True)
    weight = torch.randn(64, 4, device='cuda', requires_grad=True)
    bias = torch.randn(64, device='cuda', requires_grad=True)
    out_k = causal_conv1d(x, weight, bias, 'silu')
    gk = torch.autograd.grad(out_k.sum(), (x, weight, bias))
    with force_torch_ops():
        out_t = causal_conv1d(x, weight, bias, 'silu')
    gt = torch.autograd.grad(out_t.sum(), (x, weight, bias))
    assert torch.allclose(out_t, out_k, rtol=1e-4, atol=1e-4)
    for a, b in zip(gt, gk):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)
