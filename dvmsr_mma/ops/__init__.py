"""Selective scan and causal conv1d: ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels when present,
an exact PyTorch path otherwise."""
