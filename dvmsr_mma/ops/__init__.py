"""Selective scan and causal conv1d: ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels when present,
an exact PyTorch path otherwise."""
from .causal_conv1d import causal_conv1d
from .dispatch import force_torch_ops, torch_ops_forced
from .selective_scan import selective_scan

__all__ = ['selective_scan', 'causal_conv1d', 'force_torch_ops', 'torch_ops_forced']
