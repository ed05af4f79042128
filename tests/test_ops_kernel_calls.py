"""The calls into the optional CUDA kernels, checked on CPU against stand-ins with upstream's exact signatures.

``causal_conv1d_fn`` is causal-conv1d's (1.2.0 to 1.6.1; since 1.1.0 the fourth positional parameter is
``seq_idx``, not ``activation``), ``selective_scan_fn`` is mamba_ssm's (1.1.1 to 2.3.2). Each stand-in records
what arrived in which parameter and computes with the PyTorch path, so a GPU is not needed to catch an argument in
the wrong place.
"""
import pytest
import torch

from dvmsr_mma.archs.mamba_block import Mamba
from dvmsr_mma.ops import causal_conv1d, cuda_kernels, dispatch, selective_scan
from dvmsr_mma.ops.conv_torch import causal_conv1d_torch
from dvmsr_mma.ops.scan_torch import selective_scan_torch


@pytest.fixture
def kernels(fresh_dispatch):
    """Make the stand-ins the kernel functions and force the kernel path for CPU tensors; the recorded calls."""
    calls = {'causal_conv1d_fn': [], 'selective_scan_fn': []}

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        calls['causal_conv1d_fn'].append(dict(x=x, weight=weight, bias=bias, seq_idx=seq_idx,
                                              initial_states=initial_states, return_final_states=return_final_states,
                                              final_states_out=final_states_out, activation=activation))
        assert seq_idx is None or isinstance(seq_idx, torch.Tensor)  # upstream calls seq_idx.contiguous()
        return causal_conv1d_torch(x, weight, bias, activation)

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        calls['selective_scan_fn'].append(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                                               delta_softplus=delta_softplus, return_last_state=return_last_state))
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    fresh_dispatch.setattr(cuda_kernels, '_imported', {'causal_conv1d': (causal_conv1d_fn, None),
                                                        'selective_scan': (selective_scan_fn, None)})
    fresh_dispatch.setattr(cuda_kernels, 'KERNEL_DEVICES', ['cpu'])
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'kernel')
    return calls


def test_causal_conv1d_passes_activation_by_name(kernels):
    x, weight, bias = torch.randn(2, 6, 9), torch.randn(6, 4), torch.randn(6)
    out = causal_conv1d(x, weight, bias, activation='silu')
    (call, ) = kernels['causal_conv1d_fn']
    assert call['activation'] == 'silu' and call['seq_idx'] is None and call['initial_states'] is None
    assert call['bias'] is bias and call['return_final_states'] is False
    assert torch.equal(out, causal_conv1d_torch(x, weight, bias, 'silu'))


def test_selective_scan_passes_options_by_name(kernels):
    b, d, n, l = 2, 4, 3, 11
    u, delta, z = torch.randn(b, d, l), torch.rand(b, d, l), torch.randn(b, d, l)
    A, B, C = -torch.rand(d, n), torch.randn(b, n, l), torch.randn(b, n, l)
    D, delta_bias = torch.randn(d), torch.randn(d)
    selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
    (call, ) = kernels['selective_scan_fn']
    assert call['D'] is D and call['z'] is z and call['delta_bias'] is delta_bias
    assert call['delta_softplus'] is True and call['return_last_state'] is False


@pytest.mark.parametrize('bimamba_type', ['none', 'v2'])
def test_mamba_block_calls_reach_upstream_parameters(kernels, bimamba_type):
    """The call sites the networks use: conv with SiLU, then the scan with D, the gate z, dt bias and softplus."""
    torch.manual_seed(0)
    block = Mamba(8, d_state=4, bimamba_type=bimamba_type)
    block(torch.randn(1, 10, 8))
    directions = 2 if bimamba_type == 'v2' else 1
    convs, scans = kernels['causal_conv1d_fn'], kernels['selective_scan_fn']
    assert len(convs) == len(scans) == directions
    for call in convs:
        assert call['activation'] == 'silu' and call['seq_idx'] is None
        assert call['weight'].shape == (16, 4) and call['bias'].shape == (16, )
    branches = [(block.D, block.dt_proj)] + ([(block.D_b, block.dt_proj_b)] if directions == 2 else [])
    for call, (D, dt_proj) in zip(scans, branches):
        assert call['delta_softplus'] is True
        assert call['z'] is not None and call['z'].shape == (1, 16, 10)
        assert call['D'] is not None and torch.equal(call['D'], D.float())
        assert call['delta_bias'] is not None and torch.equal(call['delta_bias'], dt_proj.bias.float())
