"""The PyTorch causal conv1d: the semantics of ``causal_conv1d.causal_conv1d_fn`` on any device (the path every
other one falls back to; :func:`~dvmsr_mma.ops.dispatch.causal_conv1d` is the entry point)."""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['ACTIVATIONS', 'causal_conv1d_torch']

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
