"""The PyTorch selective scan: the semantics of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``.

It is exact (the same recurrence, in fp32, no division by decays, no clamping) and runs in
O(sqrt(l)) Python steps instead of l: the sequence is cut into k chunks of t steps, every chunk advances one
step at a time *together* (tensors of (b, d, k, n)), and the states carried between chunks are found by a
second, k-step scan over the chunk totals. Memory stays at a few (b, d, k, n) tensors, never (b, d, l, n).

Its backward is a ``torch.autograd.Function``: the adjoint state obeys the same recurrence run in reverse
(dh_t = C_t dy_t + exp(delta_{t+1} A) dh_{t+1}), so it is found with the same two-level scan; the forward
states are recomputed from the chunk-start states saved by the forward, a bounded group of chunks at a time.
"""
import math

import torch
import torch.nn.functional as F

from .scan_inputs import checked_b_c, fp32_inputs

__all__ = ['selective_scan_torch', 'selective_scan_step_loop']

# Elements (t * b * d * k_group * n) of the states (and decays) the backward keeps for one group of chunks:
# 64 MB each in fp32. Fewer, bigger steps: fwd+bwd at b=4, d=120, l=4096 on 2 CPU cores took 0.31 s with
# 1 << 24 and 0.34-0.37 s with 1 << 23.
BACKWARD_GROUP_ELEMENTS = 1 << 24


def _chunk_len(seqlen):
    """Steps per chunk: about sqrt(l), which minimises t + k (the Python steps of one two-level scan)."""
    return max(1, math.ceil(math.sqrt(seqlen)))


def _to_chunks(x, groups, chunk, nchunks):
    """(b, d, l) -> (t, b, g, d/g, k): time-major so each step's slice is contiguous; zero-padded to k * t."""
    b, d, l = x.shape
    pad = chunk * nchunks - l
    if pad:
        x = F.pad(x, (0, pad))
    return x.view(b, groups, d // groups, nchunks, chunk).permute(4, 0, 1, 2, 3).contiguous()


def _from_chunks(x, seqlen):
    """(t, b, g, d/g, k) -> (b, d, l)."""
    t, b, g, dg, k = x.shape
    return x.permute(1, 2, 3, 4, 0).reshape(b, g * dg, k * t)[..., :seqlen]


def _bc_to_chunks(x, chunk, nchunks):
    """(b, g, n, l) -> (t, b, g, 1, k, n), zero-padded."""
    b, g, n, l = x.shape
    pad = chunk * nchunks - l
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(b, g, n, nchunks, chunk).permute(4, 0, 1, 3, 2).unsqueeze(3).contiguous()


def _bc_from_chunks(x, seqlen):
    """(t, b, g, 1, k, n) -> (b, g, n, l)."""
    t, b, g, _, k, n = x.shape
    return x.squeeze(3).permute(1, 2, 4, 3, 0).reshape(b, g, n, k * t)[..., :seqlen]


def _step(h, buf, dt_t, du_t, A_, B_t):
    """h <- exp(dt_t A) h + du_t B_t, in place (buf is scratch of h's shape; no allocation per step)."""
    torch.mul(dt_t.unsqueeze(-1), A_, out=buf)
    h.mul_(buf.exp_())
    torch.mul(du_t.unsqueeze(-1), B_t, out=buf)
    h.add_(buf)


def _scan_forward(dt_c, du_c, A_, B_c, C_c):
    """Two-level scan. Returns y (t, b, g, dg, k) = <C_t, h_t> and the chunk-start states h0 (b, g, dg, k, n).

    dt_c, du_c: (t, b, g, dg, k); A_: (1, g, dg, 1, n); B_c, C_c: (t, b, g, 1, k, n).
    """
    chunk, b, g, dg, k = dt_c.shape
    n = A_.shape[-1]
    h0 = dt_c.new_zeros(b, g, dg, k, n)
    if k > 1:
        # 1) every chunk from a zero state: its end state
        h = dt_c.new_zeros(b, g, dg, k, n)
        buf = torch.empty_like(h)
        for t in range(chunk):
            _step(h, buf, dt_c[t], du_c[t], A_, B_c[t])
        # 2) carry across chunks: h0_{j+1} = exp(A * sum_chunk(dt)) * h0_j + end_j  (all exponents as in the loop)
        decay = torch.exp(dt_c.sum(0).unsqueeze(-1) * A_)
        carry = h0[..., 0, :]
        for j in range(k - 1):
            carry = decay[..., j, :] * carry + h[..., j, :]
            h0[..., j + 1, :] = carry
        del h, decay
    # 3) every chunk again from its true start state, emitting outputs
    h = h0.clone()
    buf = torch.empty_like(h)
    y = dt_c.new_empty(chunk, b, g, dg, k)
    for t in range(chunk):
        _step(h, buf, dt_c[t], du_c[t], A_, B_c[t])
        torch.mul(h, C_c[t], out=buf)
        torch.sum(buf, dim=-1, out=y[t])
    return y, h0


class _SelectiveScanFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dtype_in = u.dtype
        b, d, seqlen = u.shape
        u32, delta_raw, dt, A32, B32, C32 = fp32_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
        groups = B32.shape[1]
        chunk = _chunk_len(seqlen)
        k = math.ceil(seqlen / chunk)
        dt_c = _to_chunks(dt, groups, chunk, k)
        du_c = _to_chunks(dt * u32, groups, chunk, k)
        A_ = A32.view(1, groups, d // groups, 1, -1)
        y_c, h0 = _scan_forward(dt_c, du_c, A_, _bc_to_chunks(B32, chunk, k), _bc_to_chunks(C32, chunk, k))
        out = _from_chunks(y_c, seqlen)
        if D is not None:
            out = out + u32 * D.float()[:, None]
        if z is not None:
            out = out * F.silu(z.float())
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0)
        ctx.delta_softplus = delta_softplus
        ctx.chunk = chunk
        return out.to(dtype_in)

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, h0 = ctx.saved_tensors
        b, d, seqlen = u.shape
        chunk = ctx.chunk
        k = h0.shape[-2]
        u32, delta_raw, dt, A32, B32, C32 = fp32_inputs(u, delta, A, B, C, delta_bias, ctx.delta_softplus)
        groups = B32.shape[1]
        dg = d // groups
        n = A32.shape[1]
        gout = gout.float()
        gy = gout * F.silu(z.float()) if z is not None else gout  # grad of the pre-gate output
        dt_c = _to_chunks(dt, groups, chunk, k)
        du_c = _to_chunks(dt * u32, groups, chunk, k)
        gy_c = _to_chunks(gy, groups, chunk, k)
        B_c = _bc_to_chunks(B32, chunk, k)
        C_c = _bc_to_chunks(C32, chunk, k)
        A_ = A32.view(1, groups, dg, 1, n)

        # adjoint entering each chunk's last state from later chunks (b, g, dg, k, n), by a two-level reverse scan
        e = dt_c.new_zeros(b, groups, dg, k, n)
        if k > 1:
            # 1) every chunk from a zero adjoint: exp(dt_first A) * dh_first
            g = dt_c.new_zeros(b, groups, dg, k, n)
            for t in range(chunk - 1, -1, -1):
                g.add_(gy_c[t].unsqueeze(-1) * C_c[t]).mul_(torch.exp(dt_c[t].unsqueeze(-1) * A_))
            decay = torch.exp(dt_c.sum(0).unsqueeze(-1) * A_)
            carry = e[..., k - 1, :]
            for j in range(k - 1, 0, -1):
                carry = g[..., j, :] + decay[..., j, :] * carry
                e[..., j - 1, :] = carry
            del g, decay

        g_dt_c = torch.empty_like(dt_c)
        g_du_c = torch.empty_like(dt_c)
        g_B_c = torch.empty_like(B_c)
        g_C_c = torch.empty_like(C_c)
        y_c = torch.empty_like(dt_c) if z is not None else None
        g_A = torch.zeros_like(A_)
        # groups of chunks, balanced; their states and decays go to two buffers reused by every group
        per_chunk = chunk * b * d * n
        ngroups = math.ceil(k / max(1, BACKWARD_GROUP_ELEMENTS // per_chunk))
        kg = math.ceil(k / ngroups)
        hs_buf = dt_c.new_empty(chunk + 1, b, groups, dg, kg, n)
        decay_buf = dt_c.new_empty(chunk, b, groups, dg, kg, n)
        for j0 in range(0, k, kg):
            sl = slice(j0, min(k, j0 + kg))
            dt_g, du_g, gy_g = dt_c[..., sl], du_c[..., sl], gy_c[..., sl]
            B_g, C_g = B_c[..., sl, :], C_c[..., sl, :]
            # states of this group recomputed from the saved chunk starts: hs[t + 1] = h_t, hs[0] = h_{-1};
            # the per-step reductions stay inside the loops, on slices that fit in cache
            hs = hs_buf[..., :sl.stop - j0, :]
            decay = decay_buf[..., :sl.stop - j0, :]
            hs[0] = h0[..., sl, :]
            for t in range(chunk):
                torch.mul(dt_g[t].unsqueeze(-1), A_, out=decay[t]).exp_()
                torch.addcmul(du_g[t].unsqueeze(-1) * B_g[t], decay[t], hs[t], out=hs[t + 1])
                g_C_c[t, ..., sl, :] = (hs[t + 1] * gy_g[t].unsqueeze(-1)).sum(2, keepdim=True)
                if y_c is not None:
                    y_c[t, ..., sl] = (hs[t + 1] * C_g[t]).sum(-1)
            # adjoint states dh_t, backwards; d loss / d (dt_t A) = dh_t * exp(dt_t A) * h_{t-1}
            gh = e[..., sl, :].clone()
            g_A_group = torch.zeros_like(gh)
            for t in range(chunk - 1, -1, -1):
                gh.addcmul_(gy_g[t].unsqueeze(-1), C_g[t])
                g_du_c[t, ..., sl] = (gh * B_g[t]).sum(-1)
                g_B_c[t, ..., sl, :] = (gh * du_g[t].unsqueeze(-1)).sum(2, keepdim=True)
                gh.mul_(decay[t])
                q = gh * hs[t]
                g_dt_c[t, ..., sl] = (q * A_).sum(-1)
                g_A_group.addcmul_(q, dt_g[t].unsqueeze(-1))
            g_A += g_A_group.sum((0, 3), keepdim=True)
        del hs_buf, decay_buf

        g_du = _from_chunks(g_du_c, seqlen)
        g_dt = _from_chunks(g_dt_c, seqlen) + g_du * u32
        g_u = g_du * dt
        g_D = g_z = None
        if D is not None:
            g_u = g_u + gy * D.float()[:, None]
            g_D = (gy * u32).sum((0, 2)).to(D.dtype)
        if z is not None:
            out = _from_chunks(y_c, seqlen)
            if D is not None:
                out = out + u32 * D.float()[:, None]
            z32 = z.float()
            sig = torch.sigmoid(z32)
            g_z = (gout * out * sig * (1 + z32 * (1 - sig))).to(z.dtype)
        if ctx.delta_softplus:
            g_dt = g_dt * torch.sigmoid(delta_raw)
        g_delta_bias = None if delta_bias is None else g_dt.sum((0, 2)).to(delta_bias.dtype)
        g_B = _bc_from_chunks(g_B_c, seqlen)
        g_C = _bc_from_chunks(g_C_c, seqlen)
        g_B = g_B.squeeze(1) if B.dim() == 3 else g_B
        g_C = g_C.squeeze(1) if C.dim() == 3 else g_C
        return (g_u.to(u.dtype), g_dt.to(delta.dtype), g_A.view(d, n).to(A.dtype), g_B.to(B.dtype),
                g_C.to(C.dtype), g_D, g_z, g_delta_bias, None)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Exact PyTorch selective scan (any device, any length), with its own O(sqrt(l))-step backward; inputs as
    :func:`checked_b_c` takes them."""
    B, C = checked_b_c(u, delta, A, B, C, D, z, delta_bias)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan_step_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Plain step-by-step loop over l (autograd through it); the baseline the benchmark compares against."""
    dtype_in = u.dtype
    u, _, dt, A, B, C = fp32_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, seqlen = u.shape
    per_group = d // B.shape[1]
    # unbind once: indexing [..., t] inside the loop would make autograd write a full-size gradient per step
    dts, dus = dt.unbind(-1), (dt * u).unbind(-1)
    Bs, Cs = B.unbind(-1), C.unbind(-1)  # (b, g, n) each
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(seqlen):
        Bt = Bs[t].repeat_interleave(per_group, dim=1)  # (b, g, n) -> (b, d, n)
        Ct = Cs[t].repeat_interleave(per_group, dim=1)
        h = torch.exp(dts[t][..., None] * A) * h + dus[t][..., None] * Bt
        ys.append((h * Ct).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)
