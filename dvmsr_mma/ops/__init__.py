"""Selective scan and causal conv1d: ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels for the inputs they accept,
else Triton (CUDA) or numba (CPU), else an exact PyTorch path; :mod:`.dispatch` decides."""
from .causal_conv1d import causal_conv1d
from .dispatch import force_torch_ops, ops_path, torch_ops_forced
from .selective_scan import selective_scan

__all__ = ['selective_scan', 'causal_conv1d', 'force_torch_ops', 'ops_path', 'torch_ops_forced']
