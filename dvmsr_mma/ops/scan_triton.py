"""Selective scan in Triton: a fast CUDA path that needs no build (Triton compiles it at run time).

The forward has the CUDA kernel's shape: one program per (batch, channel), its n states in registers, one pass
over l in blocks of ``T`` steps. Within a block the linear recurrence h_t = a_t h_{t-1} + x_t is an associative
scan over time (pairs (a, x) combined as (a1 a2, a2 x1 + x2): products of decays, never a division), started
from the state carried from the previous block. The states at the start of every ``CB`` blocks (a chunk of
``T * CB`` steps) are saved for the backward: O(b d n l / (T CB)) memory.

The backward runs the chunks in reverse. For each chunk it first recomputes the block-start states from the
saved chunk-start state (into a small scratch buffer), then walks the blocks backwards: the states of a block
again by the forward scan, the adjoint dh_t = C_t dy_t + a_{t+1} dh_{t+1} by a reverse scan, and from both every
gradient (a_t h_{t-1} is taken as h_t - x_t, as the CUDA kernel does). Gradients of B and C are summed over the
channels of a program in registers; across programs they are summed either through per-program rows reduced by
PyTorch (deterministic, the default under ``torch.use_deterministic_algorithms``) or by atomic adds (the CUDA
kernel's choice; the order of fp32 additions, hence the last bits, can vary from run to run). A, D and
delta_bias are summed over the batch by PyTorch.

CUDA tensors run the compiled kernels. Under ``TRITON_INTERPRET=1`` (read by Triton when it is imported, which
``import torch`` already does) every Triton kernel of the process runs in Triton's interpreter instead, on CPU
tensors too: how the tests check these kernels without a GPU (see :mod:`.dispatch`).
"""
import functools
import inspect
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from .scan_inputs import checked_b_c

__all__ = ['selective_scan_triton']

# Steps per block (a power of two) and blocks per saved chunk, for the forward and the backward.
FWD_BLOCK_T = 128
BWD_BLOCK_T = 64
CHUNK_BLOCKS = 16
# Channels per backward program (summed in registers before B/C gradients leave it); a power of two.
BWD_BLOCK_D = 4
# Warps per program: with these, ptxas fits both kernels in registers on sm_80 and sm_90 (tested).
FWD_NUM_WARPS = 4
BWD_NUM_WARPS = 8


@triton.jit
def _combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2): the step h -> a2 (a1 h + x1) + x2."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr,
                su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l,
                sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                d, n, l, nchunks, channels_per_group,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                SAVE: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, CHUNK: tl.constexpr):
    # every index in int64, so no offset (channel * stride, step * stride, state * stride) wraps past 2**31
    bi = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1).to(tl.int64)
    g = ch // channels_per_group
    s = tl.arange(0, NP).to(tl.int64)
    s_ok = s < n
    tt = tl.arange(0, T).to(tl.int64)
    A = tl.load(A_ptr + ch * n + s, mask=s_ok, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + ch).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch).to(tl.float32)
    h = tl.zeros([NP], dtype=tl.float32)
    for blk in range(0, tl.cdiv(l, T)):
        if SAVE:
            if (blk * T) % CHUNK == 0:
                tl.store(states_ptr + (((bi * d + ch) * NP + s) * nchunks + (blk * T) // CHUNK), h)
        t = blk * T + tt
        t_ok = t < l
        u = tl.load(u_ptr + bi * su_b + ch * su_d + t * su_l, mask=t_ok, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + bi * sdt_b + ch * sdt_d + t * sdt_l, mask=t_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            e = tl.exp(dt)
            e1 = 1.0 + e
            dt = tl.where(dt <= 20.0, tl.where(e1 == 1.0, e, tl.log(e1) * (e / (e1 - 1.0))), dt)
        dt = tl.where(t_ok, dt, 0.0)  # steps past l: a = 1, x = 0, the state passes unchanged
        m2 = s_ok[:, None] & t_ok[None, :]
        Bt = tl.load(B_ptr + bi * sB_b + g * sB_g + s[:, None] * sB_n + t[None, :] * sB_l, mask=m2,
                     other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bi * sC_b + g * sC_g + s[:, None] * sC_n + t[None, :] * sC_l, mask=m2,
                     other=0.0).to(tl.float32)
        a = tl.exp(dt[None, :] * A[:, None])
        x = (dt * u)[None, :] * Bt
        a_cum, h_loc = tl.associative_scan((a, x), 1, _combine)
        hs = a_cum * h[:, None] + h_loc
        y = tl.sum(hs * Ct, 0)
        if HAS_D:
            y = y + Dv * u
        if HAS_Z:
            zv = tl.load(z_ptr + bi * sz_b + ch * sz_d + t * sz_l, mask=t_ok, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_ptr + (bi * d + ch) * l + t, y, mask=t_ok)
        h = tl.sum(tl.where(tt[None, :] == T - 1, hs, 0.0), 1)


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gout_ptr, states_ptr, scratch_ptr,
                gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gD_ptr, gbias_ptr, gB_ptr, gC_ptr,
                su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l,
                sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                d, n, l, nchunks, channels_per_group, gbc_rows,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                ATOMIC: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, CB: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)  # every index in int64, as in the forward
    pd = tl.program_id(1).to(tl.int64)
    ch = pd * BD + tl.arange(0, BD)  # BD channels of one group (BD divides channels_per_group)
    g = (pd * BD) // channels_per_group
    s = tl.arange(0, NP).to(tl.int64)
    s_ok = s < n
    tt = tl.arange(0, T).to(tl.int64)
    lane = bi * d + ch
    A = tl.load(A_ptr + ch[:, None] * n + s[None, :], mask=s_ok[None, :], other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + ch).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch).to(tl.float32)
    if ATOMIC:
        gbc_row = bi * gbc_rows + g
    else:
        gbc_row = bi * gbc_rows + pd
    st_off = (lane[:, None] * NP + s[None, :])  # (BD, NP) rows of the states and the scratch
    gA = tl.zeros([BD, NP], dtype=tl.float32)
    gD = tl.zeros([BD], dtype=tl.float32)
    gbias = tl.zeros([BD], dtype=tl.float32)
    carry = tl.zeros([BD, NP], dtype=tl.float32)  # dh at the first step of the block after the current one
    nblocks = tl.cdiv(l, T)
    for ci in range(0, nchunks):
        c = nchunks - 1 - ci
        # block-start states of this chunk, recomputed from the saved chunk-start state
        h = tl.load(states_ptr + (st_off * nchunks + c))
        for k in range(0, CB):
            blk = c * CB + k
            if blk < nblocks:
                tl.store(scratch_ptr + (st_off * CB + k), h)
                t = blk * T + tt
                t_ok = t < l
                u = tl.load(u_ptr + bi * su_b + ch[:, None] * su_d + t[None, :] * su_l, mask=t_ok[None, :],
                            other=0.0).to(tl.float32)
                dt = tl.load(delta_ptr + bi * sdt_b + ch[:, None] * sdt_d + t[None, :] * sdt_l,
                             mask=t_ok[None, :], other=0.0).to(tl.float32)
                if HAS_BIAS:
                    dt = dt + bias[:, None]
                if SOFTPLUS:
                    e = tl.exp(dt)
                    e1 = 1.0 + e
                    dt = tl.where(dt <= 20.0, tl.where(e1 == 1.0, e, tl.log(e1) * (e / (e1 - 1.0))), dt)
                dt = tl.where(t_ok[None, :], dt, 0.0)
                m2 = s_ok[:, None] & t_ok[None, :]
                Bt = tl.load(B_ptr + bi * sB_b + g * sB_g + s[:, None] * sB_n + t[None, :] * sB_l, mask=m2,
                             other=0.0).to(tl.float32)
                a = tl.exp(dt[:, None, :] * A[:, :, None])
                x = (dt * u)[:, None, :] * Bt[None, :, :]
                a_cum, h_loc = tl.associative_scan((a, x), 2, _combine)
                h = tl.sum(tl.where(tt[None, None, :] == T - 1, a_cum * h[:, :, None] + h_loc, 0.0), 2)
        tl.debug_barrier()  # the scratch written above is read below, possibly by other threads
        for ki in range(0, CB):
            k = CB - 1 - ki
            blk = c * CB + k
            if blk < nblocks:
                h0 = tl.load(scratch_ptr + (st_off * CB + k))
                t = blk * T + tt
                t_ok = t < l
                t1_ok = t + 1 < l
                m_dt = t_ok[None, :]
                u = tl.load(u_ptr + bi * su_b + ch[:, None] * su_d + t[None, :] * su_l, mask=m_dt,
                            other=0.0).to(tl.float32)
                draw = tl.load(delta_ptr + bi * sdt_b + ch[:, None] * sdt_d + t[None, :] * sdt_l, mask=m_dt,
                               other=0.0).to(tl.float32)
                dnext = tl.load(delta_ptr + bi * sdt_b + ch[:, None] * sdt_d + (t[None, :] + 1) * sdt_l,
                                mask=t1_ok[None, :], other=0.0).to(tl.float32)
                if HAS_BIAS:
                    draw = draw + bias[:, None]
                    dnext = dnext + bias[:, None]
                dt = draw
                if SOFTPLUS:
                    e = tl.exp(draw)
                    e1 = 1.0 + e
                    dt = tl.where(draw <= 20.0, tl.where(e1 == 1.0, e, tl.log(e1) * (e / (e1 - 1.0))), draw)
                    en = tl.exp(dnext)
                    en1 = 1.0 + en
                    dnext = tl.where(dnext <= 20.0, tl.where(en1 == 1.0, en, tl.log(en1) * (en / (en1 - 1.0))),
                                     dnext)
                dt = tl.where(m_dt, dt, 0.0)
                dnext = tl.where(t1_ok[None, :], dnext, 0.0)
                m2 = s_ok[:, None] & t_ok[None, :]
                Bt = tl.load(B_ptr + bi * sB_b + g * sB_g + s[:, None] * sB_n + t[None, :] * sB_l, mask=m2,
                             other=0.0).to(tl.float32)
                Ct = tl.load(C_ptr + bi * sC_b + g * sC_g + s[:, None] * sC_n + t[None, :] * sC_l, mask=m2,
                             other=0.0).to(tl.float32)
                gout = tl.load(gout_ptr + (lane[:, None]) * l + t[None, :], mask=m_dt, other=0.0).to(tl.float32)
                a = tl.exp(dt[:, None, :] * A[:, :, None])
                x = (dt * u)[:, None, :] * Bt[None, :, :]
                a_cum, h_loc = tl.associative_scan((a, x), 2, _combine)
                hs = a_cum * h0[:, :, None] + h_loc  # (BD, NP, T) states h_t
                gy = gout
                if HAS_Z:
                    zv = tl.load(z_ptr + bi * sz_b + ch[:, None] * sz_d + t[None, :] * sz_l, mask=m_dt,
                                 other=0.0).to(tl.float32)
                    y = tl.sum(hs * Ct[None, :, :], 1)
                    if HAS_D:
                        y = y + Dv[:, None] * u
                    sig = tl.sigmoid(zv)
                    gz = gout * y * sig * (1.0 + zv * (1.0 - sig))
                    tl.store(gz_ptr + lane[:, None] * l + t[None, :], gz, mask=m_dt)
                    gy = gout * zv * sig
                if HAS_D:
                    gD += tl.sum(gy * u, 1)
                q = Ct[None, :, :] * gy[:, None, :]
                p = tl.exp(dnext[:, None, :] * A[:, :, None])
                p_cum, q_cum = tl.associative_scan((p, q), 2, _combine, reverse=True)
                dh = q_cum + p_cum * carry[:, :, None]  # (BD, NP, T) adjoint states
                carry = tl.sum(tl.where(tt[None, None, :] == 0, dh, 0.0), 2)
                ah = hs - x  # a_t h_{t-1}
                gdt = tl.sum(dh * (ah * A[:, :, None] + u[:, None, :] * Bt[None, :, :]), 1)
                gA += tl.sum(dh * ah * dt[:, None, :], 2)
                gu = tl.sum(dh * Bt[None, :, :], 1) * dt
                if HAS_D:
                    gu += gy * Dv[:, None]
                gBt = tl.sum(dh * (dt * u)[:, None, :], 0)  # (NP, T), summed over the program's channels
                gCt = tl.sum(hs * gy[:, None, :], 0)
                if SOFTPLUS:
                    gdt = gdt * tl.sigmoid(draw)
                gdt = tl.where(m_dt, gdt, 0.0)
                if HAS_BIAS:
                    gbias += tl.sum(gdt, 1)
                tl.store(gu_ptr + lane[:, None] * l + t[None, :], gu, mask=m_dt)
                tl.store(gdelta_ptr + lane[:, None] * l + t[None, :], gdt, mask=m_dt)
                gbc = (gbc_row * NP + s[:, None]) * l + t[None, :]
                if ATOMIC:
                    tl.atomic_add(gB_ptr + gbc, gBt, mask=m2)
                    tl.atomic_add(gC_ptr + gbc, gCt, mask=m2)
                else:
                    tl.store(gB_ptr + gbc, gBt, mask=m2)
                    tl.store(gC_ptr + gbc, gCt, mask=m2)
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(gA_ptr + st_off, gA)
    if HAS_D:
        tl.store(gD_ptr + lane, gD)
    if HAS_BIAS:
        tl.store(gbias_ptr + lane, gbias)


INTERPRETED = not isinstance(_fwd_kernel, JITFunction)  # TRITON_INTERPRET=1 when triton was imported


@functools.lru_cache(maxsize=None)
def version_problem() -> Optional[str]:
    """Why the installed Triton cannot compile these kernels, or None: the backward's reverse scan needs
    ``tl.associative_scan(..., reverse=True)``, which Triton 3.0 introduced (triton-lang/triton#3177)."""
    if 'reverse' not in inspect.signature(tl.associative_scan).parameters:
        return (f'triton {triton.__version__} has no tl.associative_scan(reverse=...); the Triton scan needs '
                'triton >= 3.0 (torch >= 2.4)')
    return None


def _groups(x: torch.Tensor) -> torch.Tensor:
    """B or C as (b, g, n, l) (a view)."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def _bd(channels_per_group: int) -> int:
    """Channels per backward program: the largest power of two up to BWD_BLOCK_D dividing the group size."""
    bd = BWD_BLOCK_D
    while channels_per_group % bd:
        bd //= 2
    return bd


class _SelectiveScanTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, save):
        b, d, l = u.shape
        n = A.shape[1]
        B4, C4 = _groups(B), _groups(C)
        cpg = d // B4.shape[1]
        np_ = max(triton.next_power_of_2(n), 2)
        chunk = BWD_BLOCK_T * CHUNK_BLOCKS  # steps between saved states, a multiple of FWD_BLOCK_T
        nchunks = triton.cdiv(l, chunk)
        out = torch.empty(b, d, l, device=u.device, dtype=u.dtype)  # the kernel rounds its fp32 result once
        states = torch.empty(b, d, np_, nchunks, device=u.device, dtype=torch.float32) if save else out
        dummy = out
        _fwd_kernel[(b, d)](
            u, delta, A, B4, C4, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, out, states,
            *u.stride(), *delta.stride(), *(z.stride() if z is not None else (0, 0, 0)),
            *B4.stride(), *C4.stride(), d, n, l, nchunks, cpg,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE=save, NP=np_, T=FWD_BLOCK_T, CHUNK=chunk,
            num_warps=FWD_NUM_WARPS)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
            ctx.delta_softplus = bool(delta_softplus)
        return out

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        b, d, l = u.shape
        n = A.shape[1]
        B4, C4 = _groups(B), _groups(C)
        groups = B4.shape[1]
        cpg = d // groups
        bd = _bd(cpg)
        np_ = states.shape[2]
        nchunks = states.shape[3]
        atomic = not torch.are_deterministic_algorithms_enabled()
        rows = groups if atomic else d // bd
        f32 = dict(device=u.device, dtype=torch.float32)
        gout = gout.contiguous()
        gu, gdelta = torch.empty(b, d, l, **f32), torch.empty(b, d, l, **f32)
        gz = torch.empty(b, d, l, **f32) if z is not None else gu
        gA = torch.empty(b, d, np_, **f32)
        gD = torch.empty(b, d, **f32) if D is not None else gu
        gbias = torch.empty(b, d, **f32) if delta_bias is not None else gu
        alloc = torch.zeros if atomic else torch.empty
        gB, gC = alloc(b, rows, np_, l, **f32), alloc(b, rows, np_, l, **f32)
        scratch = torch.empty(b, d, np_, CHUNK_BLOCKS, **f32)
        dummy = gu
        _bwd_kernel[(b, d // bd)](
            u, delta, A, B4, C4, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, gout, states, scratch,
            gu, gdelta, gz, gA, gD, gbias, gB, gC,
            *u.stride(), *delta.stride(), *(z.stride() if z is not None else (0, 0, 0)),
            *B4.stride(), *C4.stride(), d, n, l, nchunks, cpg, rows,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, ATOMIC=atomic, NP=np_, BD=bd, T=BWD_BLOCK_T, CB=CHUNK_BLOCKS,
            num_warps=BWD_NUM_WARPS)
        if not atomic:  # rows of bd channels -> groups
            gB, gC = (x.view(b, groups, cpg // bd, np_, l).sum(2) for x in (gB, gC))
        gB, gC = gB[:, :, :n], gC[:, :, :n]
        if B.dim() == 3:
            gB, gC = gB.squeeze(1), gC.squeeze(1)
        return (gu.to(u.dtype), gdelta.to(delta.dtype), gA[..., :n].sum(0).to(A.dtype), gB.to(B.dtype),
                gC.to(C.dtype), gD.sum(0).to(D.dtype) if D is not None else None,
                gz.to(z.dtype) if z is not None else None,
                gbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None, None, None)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False) -> torch.Tensor:
    """The Triton selective scan; inputs as :func:`~dvmsr_mma.ops.scan_inputs.checked_b_c` takes them."""
    B, C = checked_b_c(u, delta, A, B, C, D, z, delta_bias)
    A = A.contiguous()
    D = D.contiguous() if D is not None else None
    delta_bias = delta_bias.contiguous() if delta_bias is not None else None
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):  # one grouped, the other not
        B, C = _groups(B), _groups(C)
        groups = max(B.shape[1], C.shape[1])
        B = B.repeat_interleave(groups // B.shape[1], dim=1)
        C = C.repeat_interleave(groups // C.shape[1], dim=1)
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                           for x in (u, delta, A, B, C, D, z, delta_bias))
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save)
