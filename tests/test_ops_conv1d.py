"""causal_conv1d: PyTorch path vs an F.conv1d reference (left padding w - 1), values and grads."""
import pytest
import torch
import torch.nn.functional as F

import dvmsr_mma.ops.dispatch as dispatch
from dvmsr_mma.ops import causal_conv1d, force_torch_ops


def reference_conv(x, weight, bias, activation):
    d, w = weight.shape
    out = F.conv1d(F.pad(x.double(), (w - 1, 0)), weight.double()[:, None], None if bias is None else bias.double(),
                   groups=d)
    return out if activation is None else out * torch.sigmoid(out)


@pytest.mark.parametrize('l', [1, 5, 37])
@pytest.mark.parametrize('w', [2, 3, 4])
@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('activation', [None, 'silu', 'swish'])
def test_values_and_grads_match_reference(l, w, with_bias, activation):
    g = torch.Generator().manual_seed(l * 10 + w)
    x = torch.randn(2, 6, l, generator=g, requires_grad=True)
    weight = torch.randn(6, w, generator=g, requires_grad=True)
    bias = torch.randn(6, generator=g, requires_grad=True) if with_bias else None
    out = causal_conv1d(x, weight, bias, activation)
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


def test_bad_activation_rejected():
    with pytest.raises(NotImplementedError):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2), activation='relu')


@pytest.mark.cuda
def test_torch_path_matches_kernel_on_cuda():
    if dispatch.probe_kernel('causal_conv1d_cuda') is None:
        pytest.skip('causal_conv1d_cuda not importable')
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
