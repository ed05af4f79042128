"""Single-pass selective scan for CPU tensors, compiled at run time by numba (optional: ``pip install numba``).

Why: the PyTorch path runs about 3 sqrt(l) Python steps of small multi-threaded ops, and every op waits at a
barrier for all of torch's threads; on a busy machine one descheduled thread stalls each of them. Here each
(batch, channel) lane runs its whole sequence in one compiled loop, block by block of 64 steps: softplus(delta +
bias) and silu(z) for the block first (vectorized over time), then the recurrence with the exp over the states
vectorized; lanes run as tasks on :mod:`.numba_runtime`'s threads, without barriers.

Same math as the PyTorch path: fp32 state, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, no division by decays,
no clamping, any length (results agree to float rounding: the exp, softplus and sums are computed in another
order). The backward runs the adjoint recurrence in reverse, lane by lane, recomputing each lane's states from
the checkpoints the forward saved every :data:`CHECKPOINT_STEPS` steps (O(b d n l / 64) memory, not O(b d n l)).
"""
import functools
import math
from typing import Callable, Tuple

import numba
import numpy as np
import torch
import torch.nn.functional as F

from .numba_runtime import (
    EMPTY1,
    EMPTY3,
    FLAGS,
    MATH_FLAGS,
    arr,
    exp32,
    f32,
    lane_tasks,
    log1p_small,
    run_tasks,
    stack_f32,
)
from .scan_inputs import checked_b_c

__all__ = ['selective_scan_cpu']

CHECKPOINT_STEPS = 64  # forward states kept for the backward: one per 64 steps and lane
STATE_MULTIPLE = 16  # states are zero-padded to a multiple of this (A = B = C = 0 there: those states stay 0)
# The backward's B and C gradients are summed per task part (deterministically), one (b, g, l, N) buffer each:
# fewer parts where those buffers would pass this many elements (64 MB in fp32) per gradient.
BACKWARD_PARTIAL_ELEMENTS = 1 << 24


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy', cache=True)
def _dt_block(delta, bias, softplus, dt, slope):
    """dt = softplus(delta + bias) (or delta + bias) for one block (``delta``: its slice), and its derivative
    sigmoid(x) in ``slope``; softplus(x) = max(x, 0) + log1p(exp(-|x|)), within 3 ulp of torch's. The block comes
    as a slice indexed from 0: an index that might be negative makes numba wrap it, and the loop gathers."""
    for s in range(delta.shape[0]):
        x = delta[s] + bias
        if softplus:
            e = exp32(-abs(x))
            dt[s] = max(x, np.float32(0.0)) + log1p_small(e)
            r = np.float32(1.0) / (np.float32(1.0) + e)
            slope[s] = r if x > np.float32(0.0) else e * r
        else:
            dt[s] = x
            slope[s] = np.float32(1.0)


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy', cache=True)
def _gate_block(z, gate, sig):
    """silu(z) = z sigmoid(z) for one block (``z``: its slice), and sigmoid(z) (for the gradient)."""
    for s in range(z.shape[0]):
        zz = z[s]
        sg = np.float32(1.0) / (np.float32(1.0) + exp32(-zz))
        sig[s] = sg
        gate[s] = zz * sg


@functools.lru_cache(maxsize=None)
def _kernels(n: int) -> Tuple[Callable, Callable]:
    """The forward and backward lane kernels for ``n`` states, a multiple of :data:`STATE_MULTIPLE`. ``n`` is a
    compile-time constant: the compiler then unrolls the loops over the states into whole vectors (with a run-time
    n = 16 it takes the scalar remainder loop and runs 2.5x slower). Compiled once per n, cached on disk. The
    scratch arrays live on the stack (:func:`~.numba_runtime.stack_f32`), their sizes constants too."""
    block = CHECKPOINT_STEPS
    states_size, block_states_size = (block + 1) * n, block * n

    @numba.njit(nogil=True, fastmath=FLAGS, error_model='numpy', cache=True)
    def _forward_lanes(u, delta, bias, A, Bt, Ct, D, z, y, hc, batch, c0, c1, per_group, softplus, save):
        """Lanes (batch, c0..c1): y = (<C_t, h_t> + D u) silu(z), block by block of CHECKPOINT_STEPS steps whose dt
        and gate are computed first (vectorized over time); ``save``: the state before every block into hc."""
        seqlen = u.shape[2]
        has_bias, has_d, has_z = bias.shape[0] > 0, D.shape[0] > 0, z.shape[0] > 0
        h = numba.carray(stack_f32(n), n)
        dt, slope = numba.carray(stack_f32(block), block), numba.carray(stack_f32(block), block)
        gate, sig = numba.carray(stack_f32(block), block), numba.carray(stack_f32(block), block)
        gate[:] = 1
        for c in range(c0, c1):
            g = c // per_group
            a = A[c]
            bc = bias[c] if has_bias else np.float32(0.0)
            dc = D[c] if has_d else np.float32(0.0)
            uc, yc = u[batch, c], y[batch, c]
            h[:] = 0
            for t0 in range(0, seqlen, block):
                steps = min(block, seqlen - t0)
                if save:
                    hc[batch, c, t0 // block, :] = h
                _dt_block(delta[batch, c, t0:t0 + steps], bc, softplus, dt, slope)
                if has_z:
                    _gate_block(z[batch, c, t0:t0 + steps], gate, sig)
                ub, yb = uc[t0:t0 + steps], yc[t0:t0 + steps]  # this block's views, indexed from 0
                Bb, Cb = Bt[batch, g, t0:t0 + steps], Ct[batch, g, t0:t0 + steps]
                for s in range(steps):
                    dts = dt[s]
                    du = dts * ub[s]
                    bt, ct = Bb[s], Cb[s]
                    acc = np.float32(0.0)
                    for i in range(n):
                        hi = exp32(dts * a[i]) * h[i] + du * bt[i]
                        h[i] = hi
                        acc += hi * ct[i]
                    yb[s] = (acc + dc * ub[s]) * gate[s]

    @numba.njit(nogil=True, fastmath=FLAGS, error_model='numpy', cache=True)
    def _backward_lanes(u, delta, bias, A, Bt, Ct, D, z, gout, hc, g_u, g_delta, g_z, g_A, g_D, g_bias, g_Bp, g_Cp,
                        batch, c0, c1, part, per_group, softplus):
        """Adjoint recurrence of lanes (batch, c0..c1), block by block from the last, states recomputed from hc.

        Writes g_u, g_delta, g_z and the lane's sums g_A, g_D, g_bias[batch, c]; adds into g_Bp / g_Cp[batch, part]
        (this task's own slice, summed over parts by the caller). Long sums accumulate per block, then in float64."""
        seqlen = u.shape[2]
        has_bias, has_d, has_z = bias.shape[0] > 0, D.shape[0] > 0, z.shape[0] > 0
        hs = numba.carray(stack_f32(states_size), (block + 1, n))
        decay = numba.carray(stack_f32(block_states_size), (block, n))
        dt, slope = numba.carray(stack_f32(block), block), numba.carray(stack_f32(block), block)
        gate, sig = numba.carray(stack_f32(block), block), numba.carray(stack_f32(block), block)
        ypre = numba.carray(stack_f32(block), block)
        gate[:] = 1
        gh, ga = numba.carray(stack_f32(n), n), numba.carray(stack_f32(n), n)
        ga64 = np.empty(n, np.float64)
        for c in range(c0, c1):
            g = c // per_group
            a = A[c]
            bc = bias[c] if has_bias else np.float32(0.0)
            dc = D[c] if has_d else np.float32(0.0)
            uc, goc = u[batch, c], gout[batch, c]
            gh[:] = 0
            ga64[:] = 0
            gd64 = 0.0
            gbias64 = 0.0
            for j in range((seqlen + block - 1) // block - 1, -1, -1):
                t0 = j * block
                steps = min(block, seqlen - t0)
                _dt_block(delta[batch, c, t0:t0 + steps], bc, softplus, dt, slope)
                if has_z:
                    _gate_block(z[batch, c, t0:t0 + steps], gate, sig)
                ub, gob = uc[t0:t0 + steps], goc[t0:t0 + steps]  # this block's views, indexed from 0
                Bb, Cb = Bt[batch, g, t0:t0 + steps], Ct[batch, g, t0:t0 + steps]
                gBb, gCb = g_Bp[batch, part, g, t0:t0 + steps], g_Cp[batch, part, g, t0:t0 + steps]
                gub, gdb = g_u[batch, c, t0:t0 + steps], g_delta[batch, c, t0:t0 + steps]
                hs[0] = hc[batch, c, j]
                for s in range(steps):  # (values read once into locals: a store may alias any array)
                    dts = dt[s]
                    du = dts * ub[s]
                    bt, ct = Bb[s], Cb[s]
                    h0, h1, dec = hs[s], hs[s + 1], decay[s]
                    acc = np.float32(0.0)
                    for i in range(n):
                        e = exp32(dts * a[i])
                        dec[i] = e
                        hi = e * h0[i] + du * bt[i]
                        h1[i] = hi
                        acc += hi * ct[i]
                    ypre[s] = acc + dc * ub[s]
                ga[:] = 0
                gd = np.float32(0.0)
                gbias = np.float32(0.0)
                for r in range(steps):
                    s = steps - 1 - r  # backwards
                    dts, ut = dt[s], ub[s]
                    du = dts * ut
                    gyt = gob[s] * gate[s]  # gradient of the pre-gate output
                    bt, ct = Bb[s], Cb[s]
                    gbt, gct = gBb[s], gCb[s]
                    # three loops of few arrays each, so that the compiler can vectorize them (it gives up on
                    # one loop touching nine arrays it cannot prove apart)
                    hs1, hs0, dec = hs[s + 1], hs[s], decay[s]
                    for i in range(n):
                        gh[i] += gyt * ct[i]  # adjoint of h_t
                        gct[i] += gyt * hs1[i]
                    gdu = np.float32(0.0)
                    for i in range(n):
                        gdu += gh[i] * bt[i]
                        gbt[i] += gh[i] * du
                    gda = np.float32(0.0)
                    for i in range(n):
                        ghi = gh[i] * dec[i]  # -> adjoint of h_{t-1}; d/d(dt_t a) = ghi * h_{t-1}
                        q = ghi * hs0[i]
                        gda += q * a[i]
                        ga[i] += q * dts
                        gh[i] = ghi
                    gub[s] = gdu * dts + gyt * dc
                    gdelta = (gda + gdu * ut) * slope[s]
                    gdb[s] = gdelta
                    gbias += gdelta
                    gd += gyt * ut
                    if has_z:
                        sg = sig[s]
                        zt = z[batch, c, t0 + s]
                        g_z[batch, c, t0 + s] = gob[s] * ypre[s] * sg * (np.float32(1.0) + zt * (np.float32(1.0) - sg))
                for i in range(n):
                    ga64[i] += ga[i]
                gd64 += gd
                gbias64 += gbias
            for i in range(n):
                g_A[batch, c, i] = ga64[i]
            g_D[batch, c] = gd64
            g_bias[batch, c] = gbias64

    return _forward_lanes, _backward_lanes


def _padded_states(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """fp32 A (d, N), B and C as (b, g, l, N) (time-major, states last), zero-padded to N states, a multiple of
    STATE_MULTIPLE: a padded state has A = B = 0, so it stays 0, and C = 0, so it adds nothing."""
    pad = -A.shape[1] % STATE_MULTIPLE
    B4, C4 = (x.unsqueeze(1) if x.dim() == 3 else x for x in (B, C))
    Bt, Ct = (F.pad(x.detach().float().transpose(2, 3), (0, pad)).contiguous() for x in (B4, C4))
    return F.pad(A.detach().float(), (0, pad)).contiguous(), Bt, Ct


class _SelectiveScanCPU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        b, d, seqlen = u.shape
        A32, Bt, Ct = _padded_states(A, B, C)
        u32, delta32 = f32(u), f32(delta)
        save = any(ctx.needs_input_grad)
        nblocks = math.ceil(seqlen / CHECKPOINT_STEPS)
        hc = u32.new_empty((b, d, nblocks, A32.shape[1]) if save else (0, 0, 0, 0))
        y = torch.empty_like(u32)
        arrays = (arr(u32), arr(delta32), arr(f32(delta_bias), EMPTY1), arr(A32), arr(Bt), arr(Ct),
                  arr(f32(D), EMPTY1), arr(f32(z), EMPTY3), arr(y), arr(hc))
        forward_lanes, _ = _kernels(A32.shape[1])
        run_tasks([(*arrays, i, c0, c1, d // Bt.shape[1], delta_softplus, save) for i, c0, c1, _ in lane_tasks(b, d)],
                  forward_lanes)
        if save:  # the padded fp32 A, B, C too: the backward reads them as the forward did
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hc, A32, Bt, Ct)
            ctx.delta_softplus = delta_softplus
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, hc, A32, Bt, Ct = ctx.saved_tensors
        b, d, seqlen = u.shape
        n = A.shape[1]
        groups, padded = Bt.shape[1], A32.shape[1]
        u32 = f32(u)
        tasks = lane_tasks(b, d, max_parts=max(1, BACKWARD_PARTIAL_ELEMENTS // (b * groups * seqlen * padded)))
        parts = max(task[3] for task in tasks) + 1
        g_u, g_delta = torch.empty_like(u32), torch.empty_like(u32)
        g_z = torch.empty_like(u32) if z is not None else None
        g_A, g_D, g_bias = u32.new_empty(b, d, padded), u32.new_empty(b, d), u32.new_empty(b, d)
        g_Bp = u32.new_zeros(b, parts, groups, seqlen, padded)
        g_Cp = u32.new_zeros(b, parts, groups, seqlen, padded)
        arrays = (arr(u32), arr(f32(delta)), arr(f32(delta_bias), EMPTY1), arr(A32), arr(Bt), arr(Ct),
                  arr(f32(D), EMPTY1), arr(f32(z), EMPTY3), arr(f32(gout)), arr(hc), arr(g_u), arr(g_delta),
                  arr(g_z, EMPTY3), arr(g_A), arr(g_D), arr(g_bias), arr(g_Bp), arr(g_Cp))
        _, backward_lanes = _kernels(padded)
        run_tasks([(*arrays, i, c0, c1, p, d // groups, ctx.delta_softplus) for i, c0, c1, p in tasks], backward_lanes)

        g_B = g_Bp.sum(1)[..., :n].transpose(2, 3)  # (b, g, l, N) -> (b, g, n, l)
        g_C = g_Cp.sum(1)[..., :n].transpose(2, 3)
        g_B = g_B.squeeze(1) if B.dim() == 3 else g_B
        g_C = g_C.squeeze(1) if C.dim() == 3 else g_C
        return (g_u.to(u.dtype), g_delta.to(delta.dtype), g_A.sum(0)[:, :n].to(A.dtype), g_B.to(B.dtype),
                g_C.to(C.dtype), None if D is None else g_D.sum(0).to(D.dtype), None if z is None else g_z.to(z.dtype),
                None if delta_bias is None else g_bias.sum(0).to(delta_bias.dtype), None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The compiled CPU scan: ``selective_scan_torch``'s arguments, checks and results (to float rounding)."""
    B, C = checked_b_c(u, delta, A, B, C, D, z, delta_bias)
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
