"""Selective scan and causal conv1d: ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels for the inputs they accept,
else Triton (CUDA) or numba (CPU), else an exact PyTorch path; :mod:`.dispatch` decides."""
from .dispatch import (
    causal_conv1d,
    causal_conv1d_tokens,
    force_torch_ops,
    ops_path,
    selective_scan,
    selective_scan_tokens,
    token_major,
    torch_ops_forced,
)

__all__ = [
    'selective_scan', 'causal_conv1d', 'selective_scan_tokens', 'causal_conv1d_tokens', 'token_major',
    'force_torch_ops', 'ops_path', 'torch_ops_forced'
]
