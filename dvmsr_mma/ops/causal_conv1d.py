"""Depthwise causal conv1d with the signature and semantics of ``causal_conv1d.causal_conv1d_fn``.

The signature is upstream's (causal-conv1d 1.2 to 1.6): ``seq_idx``, ``initial_states``, ``return_final_states``
and ``final_states_out`` sit between ``bias`` and ``activation``, so positional callers of upstream work here too,
and this module calls the kernel with every option by keyword. Those four are streaming / packed-sequence
features that super-resolution does not use; they are refused with one line rather than half supported.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .cuda_kernels import kernel_function
from .dispatch import select

__all__ = ['causal_conv1d', 'causal_conv1d_tokens', 'causal_conv1d_torch']

ACTIVATIONS = (None, 'silu', 'swish')


def causal_conv1d_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                        activation: Optional[str] = None) -> torch.Tensor:
    """PyTorch path: depthwise conv with ``w - 1`` zeros of left padding. x: (b, d, l), weight: (d, w).

    Computed in fp32 whatever the input dtypes (autocast off), and cast to x's dtype, as the kernel
    accumulates: in fp16/bf16 a low-precision conv makes the weight gradient (a sum over b * l) drift.
    """
    if activation not in ACTIVATIONS:
        raise NotImplementedError('activation must be None, "silu" or "swish"')
    dim, width = weight.shape
    seqlen = x.shape[-1]
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = F.conv1d(x.float(), weight.float().unsqueeze(1), None if bias is None else bias.float(),
                       padding=width - 1, groups=dim)[..., :seqlen]
        if activation is not None:
            out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, seq_idx=None,
                  initial_states=None, return_final_states: bool = False, final_states_out=None,
                  activation: Optional[str] = None) -> torch.Tensor:
    """Causal depthwise conv1d. x: (b, d, l), weight: (d, w), bias: (d,), activation: None, 'silu' or 'swish'.

    Runs ``causal_conv1d_cuda`` for CUDA tensors it accepts (see :mod:`.cuda_kernels`), the numba kernel for CPU
    tensors (on a (b, l, d) copy: see :func:`causal_conv1d_tokens`), else PyTorch. ``seq_idx``, ``initial_states``,
    ``return_final_states`` and ``final_states_out`` are not supported.
    """
    streaming = {'seq_idx': seq_idx, 'initial_states': initial_states, 'final_states_out': final_states_out,
                 'return_final_states': return_final_states or None}
    for name, value in streaming.items():
        if value is not None:
            raise NotImplementedError(f'causal_conv1d: {name} is not supported (a streaming / packed-sequence '
                                      'feature of causal-conv1d that super-resolution does not use)')
    if activation not in ACTIVATIONS:
        raise NotImplementedError('activation must be None, "silu" or "swish"')
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f'causal_conv1d: x must be (b, d, l) and weight (d, w), got x {tuple(x.shape)} and '
                         f'weight {tuple(weight.shape)}')
    path = select('causal_conv1d', dict(x=x, weight=weight, bias=bias))
    if path == 'kernel':
        return kernel_function('causal_conv1d')(x, weight, bias=bias, activation=activation)
    if path == 'numba':
        from .conv_cpu import causal_conv1d_tokens_cpu
        return causal_conv1d_tokens_cpu(x.transpose(1, 2), weight, bias, activation).transpose(1, 2).contiguous()
    return causal_conv1d_torch(x, weight, bias, activation)


def causal_conv1d_tokens(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         activation: Optional[str] = None, reverse: bool = False) -> torch.Tensor:
    """:func:`causal_conv1d` on token-major x (b, l, d), as the Mamba mixer holds it; ``reverse``: the conv of the
    flipped sequence, flipped back. Returns (b, l, d). The numba path reads x where it is (see :mod:`.conv_cpu`);
    every other path runs :func:`causal_conv1d` on a (b, d, l) view (a flipped copy for ``reverse``)."""
    if activation not in ACTIVATIONS:
        raise NotImplementedError('activation must be None, "silu" or "swish"')
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f'causal_conv1d_tokens: x must be (b, l, d) and weight (d, w), got x {tuple(x.shape)} and '
                         f'weight {tuple(weight.shape)}')
    if select('causal_conv1d', dict(x=x, weight=weight, bias=bias)) == 'numba':
        from .conv_cpu import causal_conv1d_tokens_cpu
        return causal_conv1d_tokens_cpu(x, weight, bias, activation, reverse)
    x = x.flip(1) if reverse else x
    y = causal_conv1d(x.transpose(1, 2), weight, bias, activation=activation).transpose(1, 2)
    return y.flip(1) if reverse else y
