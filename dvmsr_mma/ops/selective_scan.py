"""Selective scan with the semantics of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``."""
import torch
import torch.nn.functional as F

from .dispatch import use_kernel

__all__ = ['selective_scan', 'selective_scan_torch']


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """PyTorch path (placeholder: step-by-step, fp32)."""
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    n = A.shape[1]
    A = A.float()
    B = B.float()
    C = C.float()
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    B = B.repeat_interleave(d // B.shape[1], dim=1)  # (b, d, n, l)
    C = C.repeat_interleave(d // C.shape[1], dim=1)
    h = u.new_zeros(b, d, n)
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan. u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,).

    Returns (b, d, l) in u's dtype. Runs ``selective_scan_cuda`` when it is importable, the tensors are on CUDA
    and the PyTorch path is not forced; the exact PyTorch path otherwise.
    """
    if use_kernel('selective_scan', 'selective_scan_cuda', u, delta, A, B, C, D, z, delta_bias):
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
