"""The input checks and fp32 preparation the non-kernel selective scan paths share (PyTorch, numba, Triton, graph).

A leaf module: the implementations import it, and it imports none of them nor the dispatch.
"""
import torch.nn.functional as F

__all__ = ['checked_b_c', 'fp32_inputs']


def _check_shapes(op, token_major, u, delta, A, B, C, D, z, delta_bias):
    """One line naming the tensor whose shape does not fit, instead of a reshape error deep in the scan. Channel
    first: u, delta, z (b, d, l); B, C (d, n), (b, n, l) or (b, g, n, l). ``token_major``: u, delta, z (b, l, d);
    B, C (b, l, n) or (b, l, g, n). A is (d, n), D and delta_bias (d,) in both."""
    if A.is_complex():
        raise NotImplementedError(f'{op}: real A only (complex A is not supported off the CUDA kernel)')
    if u.dim() != 3:
        raise ValueError(f'{op}: u must be {"(b, l, d)" if token_major else "(b, d, l)"}, got {tuple(u.shape)}')
    b, l, d = u.shape if token_major else (u.shape[0], u.shape[2], u.shape[1])
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f'{op}: A must be (d, n) = ({d}, n), got {tuple(A.shape)}')
    n = A.shape[1]
    for name, x in (('delta', delta), ('z', z)):
        if x is not None and tuple(x.shape) != tuple(u.shape):
            raise ValueError(f'{op}: {name} must have the shape of u {tuple(u.shape)}, got {tuple(x.shape)}')
    for name, x in (('D', D), ('delta_bias', delta_bias)):
        if x is not None and tuple(x.shape) != (d, ):
            raise ValueError(f'{op}: {name} must be ({d},), got {tuple(x.shape)}')
    for name, x in (('B', B), ('C', C)):
        shape = tuple(x.shape)
        if token_major:
            fits = shape == (b, l, n) or (x.dim() == 4 and shape[:2] == (b, l) and shape[3] == n and d % shape[2] == 0)
        else:
            fits = ((x.dim() == 2 and shape == (d, n)) or (x.dim() == 3 and shape == (b, n, l))
                    or (x.dim() == 4 and shape[0] == b and shape[2:] == (n, l) and d % shape[1] == 0))
        if not fits:  # the sizes are formatted only here: under torch.export, str() of a symbolic size fixes it
            forms = (f'({b}, {l}, {n}) or ({b}, {l}, g, {n})' if token_major else
                     f'({d}, {n}) (time-invariant), ({b}, {n}, {l}) or ({b}, g, {n}, {l})')
            raise ValueError(f'{op}: {name} must be {forms} with g dividing {d}; got {shape}')


def _per_channel(x, b, d, l):
    """B or C as fp32 (b, d, n, l): a time-invariant (d, n) one broadcast over batch and time, a grouped one
    repeated. Cast before the copies: autograd then sums the copies' gradients in fp32 and rounds once to the
    input's dtype, as upstream's kernel does (fp16 copies would each be rounded before the sum)."""
    x = x.float()
    if x.dim() == 2:
        return x[None, :, :, None].expand(b, d, x.shape[1], l)
    x = x.unsqueeze(1) if x.dim() == 3 else x
    return x.repeat_interleave(d // x.shape[1], dim=1)


def checked_b_c(u, delta, A, B, C, D, z, delta_bias):
    """What every non-kernel path does first: refuse complex A and bad shapes in one line; return B and C, where
    either is time-invariant ``(d, n)`` both as fp32 ``(b, d, n, l)`` (one group per channel: exact, but O(b d n l)
    memory; the Mamba blocks of DVMSR and MMA use time-varying B and C). Autograd sums their gradients back."""
    _check_shapes('selective_scan', False, u, delta, A, B, C, D, z, delta_bias)
    if B.dim() == 2 or C.dim() == 2:
        b, d, l = u.shape
        B, C = _per_channel(B, b, d, l), _per_channel(C, b, d, l)
    return B, C


def fp32_inputs(u, delta, A, B, C, delta_bias, delta_softplus):
    """fp32 copies, delta with bias and softplus applied, B/C as (b, g, n, l)."""
    u = u.float()
    delta_raw = delta.float()
    if delta_bias is not None:
        delta_raw = delta_raw + delta_bias.float()[:, None]
    dt = F.softplus(delta_raw) if delta_softplus else delta_raw
    B = B.float()
    C = C.float()
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    return u, delta_raw, dt, A.float(), B, C


def checked_token_shapes(u, delta, A, B, C, D, z, delta_bias):
    """The token-major scan's inputs, refused in one line as :func:`checked_b_c` refuses the others."""
    _check_shapes('selective_scan_tokens', True, u, delta, A, B, C, D, z, delta_bias)
