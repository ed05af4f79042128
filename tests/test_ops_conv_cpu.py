"""The numba token-major conv (dvmsr_mma.ops.conv_cpu): in place on the mixer's xz half, both directions, values and
gradients against a float64 reference; no copies; the same bits at any thread count; the public entry's fallback."""
import pytest
import torch
import torch.nn.functional as F

from dvmsr_mma.ops import causal_conv1d_tokens, force_torch_ops

pytest.importorskip('numba', reason='the numba CPU conv is optional (pip install numba)')
conv_cpu = pytest.importorskip('dvmsr_mma.ops.conv_cpu')


def reference_tokens(x, weight, bias, silu, reverse):
    """float64 F.conv1d with w - 1 zeros on the left, on the (flipped) (b, d, l) view of token-major x."""
    xs = x.double().transpose(1, 2)
    xs = xs.flip(-1) if reverse else xs
    out = F.conv1d(F.pad(xs, (weight.shape[1] - 1, 0)), weight.double()[:, None],
                   None if bias is None else bias.double(), groups=weight.shape[0])
    out = F.silu(out) if silu else out
    return (out.flip(-1) if reverse else out).transpose(1, 2)


def xz_inputs(b, l, d, width, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    xz = torch.randn(b, l, 2 * d, generator=g, requires_grad=True)
    weight = torch.randn(d, width, generator=g, requires_grad=True)
    bias = torch.randn(d, generator=g, requires_grad=True) if with_bias else None
    return xz, weight, bias


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('silu, with_bias', [(True, True), (False, False)])
@pytest.mark.parametrize('b, l, d, width', [(2, 300, 24, 4), (1, 5, 70, 4), (2, 2100, 130, 3), (1, 2, 5, 4),
                                            (3, 257, 16, 1), (2, 40, 8, 9)])
def test_in_place_on_xz_matches_reference(b, l, d, width, silu, with_bias, reverse):
    """Blocks of BLOCK_STEPS (2100 steps: three, the last partial), rows wider than one accumulator (130 > 64),
    sequences shorter than the kernel, width 1."""
    xz, weight, bias = xz_inputs(b, l, d, width, with_bias, seed=l + d)
    x = xz[..., :d]  # the first half of xz, as the mixer hands it over
    out = conv_cpu.causal_conv1d_tokens_cpu(x, weight, bias, 'silu' if silu else None, reverse)
    ref = reference_tokens(x, weight, bias, silu, reverse)
    assert out.shape == (b, l, d) and out.is_contiguous()
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-6)
    params = [p for p in (xz, weight, bias) if p is not None]
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for a, r in zip(torch.autograd.grad(out, params, go), torch.autograd.grad(ref, params, go.double())):
        assert torch.allclose(a.double(), r.double(), rtol=1e-4, atol=1e-5)


def test_reads_the_half_without_a_copy():
    xz, weight, bias = xz_inputs(2, 50, 24, 4, True, seed=0)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        conv_cpu.causal_conv1d_tokens_cpu(xz[..., :24], weight, bias, 'silu')
    copies = [e.input_shapes for e in prof.key_averages(group_by_input_shape=True) if e.key == 'aten::copy_']
    assert not [shapes for shapes in copies if len(shapes[0]) >= 3], copies


def test_results_do_not_depend_on_thread_count():
    xz, weight, bias = xz_inputs(2, 1000, 40, 4, True, seed=3)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = conv_cpu.causal_conv1d_tokens_cpu(xz[..., 40:], weight, bias, 'silu', True)
            results.append((out, torch.autograd.grad(out.square().sum(), (xz, weight, bias))))
    finally:
        torch.set_num_threads(previous)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1]))


def test_public_entry_falls_back_to_the_b_d_l_ops():
    """causal_conv1d_tokens without numba's path: the (b, d, l) conv on a view (a flipped copy in reverse)."""
    xz, weight, bias = xz_inputs(2, 40, 8, 4, True, seed=5)
    for reverse in (False, True):
        fast = causal_conv1d_tokens(xz[..., :8], weight, bias, 'silu', reverse)
        with force_torch_ops():
            slow = causal_conv1d_tokens(xz[..., :8], weight, bias, 'silu', reverse)
        assert torch.allclose(fast, slow, atol=1e-6)


def test_bad_shapes_are_one_line():
    with pytest.raises(ValueError, match=r'^causal_conv1d_tokens: x must be \(b, l, d\) and weight \(d, w\), got x '
                                         r'\(2, 5, 8\) and weight \(5, 4\)$'):
        causal_conv1d_tokens(torch.randn(2, 5, 8), torch.randn(5, 4))
