"""Depthwise causal conv1d with the semantics of ``causal_conv1d.causal_conv1d_fn``."""
import torch.nn.functional as F

from .dispatch import use_kernel

__all__ = ['causal_conv1d', 'causal_conv1d_torch']


def causal_conv1d_torch(x, weight, bias=None, activation=None):
    """PyTorch path: depthwise conv with ``w - 1`` zeros of left padding. x: (b, d, l), weight: (d, w)."""
    if activation not in (None, 'silu', 'swish'):
        raise NotImplementedError('activation must be None, "silu" or "swish"')
    dim, width = weight.shape
    seqlen = x.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                   padding=width - 1, groups=dim)[..., :seqlen]
    return out if activation is None else F.silu(out)


def causal_conv1d(x, weight, bias=None, activation=None):
    """Causal depthwise conv1d. x: (b, d, l), weight: (d, w), bias: (d,), activation: None, 'silu' or 'swish'.

    Runs ``causal_conv1d_cuda`` when it is importable, the tensors are on CUDA and the PyTorch path is not forced.
    """
    if activation not in (None, 'silu', 'swish'):
        raise NotImplementedError('activation must be None, "silu" or "swish"')
    if use_kernel('causal_conv1d', 'causal_conv1d_cuda', x, weight, bias):
        from causal_conv1d import causal_conv1d_fn
        return causal_conv1d_fn(x, weight, bias, activation)
    return causal_conv1d_torch(x, weight, bias, activation)
