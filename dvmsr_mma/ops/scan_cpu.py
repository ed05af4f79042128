"""Single-pass selective scan for CPU tensors, compiled at run time by numba (optional: ``pip install numba``).

Why: the PyTorch path runs about 3 sqrt(l) Python steps of small multi-threaded ops, and every op waits at a
barrier for all of torch's threads; on a busy machine one descheduled thread stalls each of them (13x slower
under load). Here each (batch, channel) lane runs its whole sequence in one compiled loop, its n states in
registers, the exp over n vectorized (:func:`_exp`), with no barrier: lanes are split into tasks that a pool of
``torch.get_num_threads()`` Python threads takes one at a time (numba releases the GIL), so a slow thread only
takes fewer tasks.

Same math as the PyTorch path: fp32 state, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, no division by decays,
no clamping, any length; delta's bias and softplus, silu(z) and the gradients of the gate are computed by the
same torch ops. The backward runs the adjoint recurrence in reverse, lane by lane, recomputing each lane's
states from the checkpoints the forward saved every :data:`CHECKPOINT_STEPS` steps (O(b d n l / 64) memory).
"""
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .selective_scan import _check_shapes, _per_channel

__all__ = ['selective_scan_cpu']

CHECKPOINT_STEPS = 64  # forward states kept for the backward: one per 64 steps and lane
STATE_MULTIPLE = 16  # states are zero-padded to a multiple of this (A = B = C = 0 there: those states stay 0)
TASKS_PER_THREAD = 8  # lanes are cut into about this many tasks per thread, for balance on a busy machine

# No 'nnan'/'ninf': NaN and inf propagate as in torch. error_model='numpy': no zero-division check per element,
# which would keep loops from vectorizing. The elementwise math fuses multiply-adds ('contract'); the kernels do
# not, since contracted products keep the compiler from vectorizing the sums over the states (4x slower there).
# The elementwise math keeps its order (no 'reassoc': 2^k is built from two factors that must not be multiplied
# first); it is in separate functions, so each keeps its own flags when the compiler inlines it.
_FLAGS = {'reassoc', 'nsz', 'arcp'}
_MATH_FLAGS = {'contract', 'nsz', 'arcp'}
_EMPTY1, _EMPTY3 = np.empty(0, np.float32), np.empty((0, 0, 0), np.float32)


@intrinsic
def _int_bits_as_float(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (builds 2^k from its exponent field)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(fastmath=_MATH_FLAGS, error_model='numpy', cache=True)
def _exp(x):
    """float32 exp in a form the compiler vectorizes: x = k ln2 + r with |r| <= ln2 / 2, e^r by Cephes' expf
    polynomial (about 1 ulp, as torch's), 2^k as two exponent-field factors so results down to the denormals
    and up to inf come out right; clamping to [-104, 89] changes no float32 result; NaN propagates."""
    xc = min(max(x, np.float32(-104.0)), np.float32(89.0))
    k = np.float32(math.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5)))
    r = xc - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    e = p * r * r + r + np.float32(1.0)
    k1 = np.int32(k) >> np.int32(1)
    k2 = np.int32(k) - k1
    s1 = _int_bits_as_float((k1 + np.int32(127)) << np.int32(23))
    s2 = _int_bits_as_float((k2 + np.int32(127)) << np.int32(23))
    return e * s1 * s2 + (x - x)


@numba.njit(fastmath=_MATH_FLAGS, error_model='numpy', cache=True)
def _log1p_small(y):
    """log1p(y) for y in [0, 1], vectorizable and free of cancellation (so it survives reassociation):
    2 atanh(v) with v = y / (2 + y) <= 1/3, the series to v^15 (truncation below 1e-9)."""
    v = y / (np.float32(2.0) + y)
    w = v * v
    p = np.float32(1.0 / 15.0)
    p = p * w + np.float32(1.0 / 13.0)
    p = p * w + np.float32(1.0 / 11.0)
    p = p * w + np.float32(1.0 / 9.0)
    p = p * w + np.float32(1.0 / 7.0)
    p = p * w + np.float32(1.0 / 5.0)
    p = p * w + np.float32(1.0 / 3.0)
    return np.float32(2.0) * v + np.float32(2.0) * v * w * p


@numba.njit(fastmath=_MATH_FLAGS, error_model='numpy', cache=True)
def _dt_block(delta, t0, steps, bias, softplus, dt, slope):
    """dt = softplus(delta + bias) (or delta + bias) for steps t0.., and its derivative sigmoid(x) in ``slope``;
    softplus(x) = max(x, 0) + log1p(exp(-|x|)), within 3 ulp of torch's."""
    for s in range(steps):
        x = delta[t0 + s] + bias
        if softplus:
            e = _exp(-abs(x))
            dt[s] = max(x, np.float32(0.0)) + _log1p_small(e)
            r = np.float32(1.0) / (np.float32(1.0) + e)
            slope[s] = r if x > np.float32(0.0) else e * r
        else:
            dt[s] = x
            slope[s] = np.float32(1.0)


@numba.njit(fastmath=_MATH_FLAGS, error_model='numpy', cache=True)
def _gate_block(z, t0, steps, gate, sig):
    """silu(z) = z sigmoid(z) for steps t0.., and sigmoid(z) (for the gradient)."""
    for s in range(steps):
        zz = z[t0 + s]
        sg = np.float32(1.0) / (np.float32(1.0) + _exp(-zz))
        sig[s] = sg
        gate[s] = zz * sg


@functools.lru_cache(maxsize=None)
def _kernels(n: int) -> Tuple[Callable, Callable]:
    """The forward and backward lane kernels for ``n`` states, a multiple of :data:`STATE_MULTIPLE`. ``n`` is a
    compile-time constant: the compiler then unrolls the loops over the states into whole vectors (with a run-time
    n = 16 it takes the scalar remainder loop and runs 2.5x slower). Compiled once per n, cached on disk."""

    @numba.njit(nogil=True, fastmath=_FLAGS, error_model='numpy', cache=True)
    def _forward_lanes(u, delta, bias, A, Bt, Ct, D, z, y, hc, batch, c0, c1, per_group, softplus, save):
        """Lanes (batch, c0..c1): y = (<C_t, h_t> + D u) silu(z), block by block of CHECKPOINT_STEPS steps whose dt
        and gate are computed first (vectorized over time); ``save``: the state before every block into hc."""
        seqlen, block = u.shape[2], CHECKPOINT_STEPS
        has_bias, has_d, has_z = bias.shape[0] > 0, D.shape[0] > 0, z.shape[0] > 0
        h = np.zeros(n, np.float32)
        dt, slope = np.empty(block, np.float32), np.empty(block, np.float32)
        gate, sig = np.ones(block, np.float32), np.empty(block, np.float32)
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
                _dt_block(delta[batch, c], t0, steps, bc, softplus, dt, slope)
                if has_z:
                    _gate_block(z[batch, c], t0, steps, gate, sig)
                for s in range(steps):
                    t = t0 + s
                    dts = dt[s]
                    du = dts * uc[t]
                    bt, ct = Bt[batch, g, t], Ct[batch, g, t]
                    acc = np.float32(0.0)
                    for i in range(n):
                        hi = _exp(dts * a[i]) * h[i] + du * bt[i]
                        h[i] = hi
                        acc += hi * ct[i]
                    yc[t] = (acc + dc * uc[t]) * gate[s]

    @numba.njit(nogil=True, fastmath=_FLAGS, error_model='numpy', cache=True)
    def _backward_lanes(u, delta, bias, A, Bt, Ct, D, z, gout, hc, g_u, g_delta, g_z, g_A, g_D, g_bias, g_Bp, g_Cp,
                        batch, c0, c1, part, per_group, softplus):
        """Adjoint recurrence of lanes (batch, c0..c1), block by block from the last, states recomputed from hc.

        Writes g_u, g_delta, g_z and the lane's sums g_A, g_D, g_bias[batch, c]; adds into g_Bp / g_Cp[batch, part]
        (this task's own slice, summed over parts by the caller). Long sums accumulate per block, then in float64."""
        seqlen, block = u.shape[2], CHECKPOINT_STEPS
        has_bias, has_d, has_z = bias.shape[0] > 0, D.shape[0] > 0, z.shape[0] > 0
        hs = np.empty((block + 1, n), np.float32)
        decay = np.empty((block, n), np.float32)
        dt, slope = np.empty(block, np.float32), np.empty(block, np.float32)
        gate, sig, ypre = np.ones(block, np.float32), np.empty(block, np.float32), np.empty(block, np.float32)
        gh, ga = np.empty(n, np.float32), np.empty(n, np.float32)
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
                _dt_block(delta[batch, c], t0, steps, bc, softplus, dt, slope)
                if has_z:
                    _gate_block(z[batch, c], t0, steps, gate, sig)
                hs[0] = hc[batch, c, j]
                for s in range(steps):  # (values read once into locals: a store may alias any array)
                    t = t0 + s
                    dts = dt[s]
                    du = dts * uc[t]
                    bt, ct = Bt[batch, g, t], Ct[batch, g, t]
                    h0, h1, dec = hs[s], hs[s + 1], decay[s]
                    acc = np.float32(0.0)
                    for i in range(n):
                        e = _exp(dts * a[i])
                        dec[i] = e
                        hi = e * h0[i] + du * bt[i]
                        h1[i] = hi
                        acc += hi * ct[i]
                    ypre[s] = acc + dc * uc[t]
                ga[:] = 0
                gd = np.float32(0.0)
                gbias = np.float32(0.0)
                for s in range(steps - 1, -1, -1):
                    t = t0 + s
                    dts, ut = dt[s], uc[t]
                    du = dts * ut
                    gyt = goc[t] * gate[s]  # gradient of the pre-gate output
                    bt, ct = Bt[batch, g, t], Ct[batch, g, t]
                    gbt, gct = g_Bp[batch, part, g, t], g_Cp[batch, part, g, t]
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
                    g_u[batch, c, t] = gdu * dts + gyt * dc
                    gdelta = (gda + gdu * ut) * slope[s]
                    g_delta[batch, c, t] = gdelta
                    gbias += gdelta
                    gd += gyt * ut
                    if has_z:
                        sg = sig[s]
                        zt = z[batch, c, t]
                        g_z[batch, c, t] = goc[t] * ypre[s] * sg * (np.float32(1.0) + zt * (np.float32(1.0) - sg))
                for i in range(n):
                    ga64[i] += ga[i]
                gd64 += gd
                gbias64 += gbias
            for i in range(n):
                g_A[batch, c, i] = ga64[i]
            g_D[batch, c] = gd64
            g_bias[batch, c] = gbias64

    return _forward_lanes, _backward_lanes


_pool: Optional[ThreadPoolExecutor] = None
_pool_key: Tuple[int, int] = (0, 0)
_pool_lock = threading.Lock()


def _run(tasks: List[tuple], fn) -> None:
    """Run ``fn(*task)`` for every task on at most ``torch.get_num_threads()`` threads (inline for one)."""
    threads = min(torch.get_num_threads(), len(tasks))
    if threads <= 1:
        for task in tasks:
            fn(*task)
        return
    global _pool, _pool_key
    with _pool_lock:
        key = (os.getpid(), threads)  # a forked child has the object but not the threads
        if _pool is None or _pool_key != key:
            _pool = ThreadPoolExecutor(threads, thread_name_prefix='dvmsr_mma_scan')
            _pool_key = key
        pool = _pool
    for future in [pool.submit(fn, *task) for task in tasks]:
        future.result()


def _tasks(b: int, d: int) -> List[Tuple[int, int, int, int]]:
    """(batch, first channel, end channel, part) covering every lane, about TASKS_PER_THREAD per thread."""
    parts = max(1, min(d, math.ceil(TASKS_PER_THREAD * torch.get_num_threads() / b)))
    bounds = [round(i * d / parts) for i in range(parts + 1)]
    return [(i, bounds[p], bounds[p + 1], p) for i in range(b) for p in range(parts)]


def _np(x: Optional[torch.Tensor], empty: Optional[np.ndarray] = None) -> np.ndarray:
    """The array numba sees (sharing memory with ``x``); ``empty`` stands for an absent optional input."""
    return empty if x is None else x.detach().numpy()


def _f32(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.detach().float().contiguous()


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
        u32, delta32 = _f32(u), _f32(delta)
        save = any(ctx.needs_input_grad)
        nblocks = math.ceil(seqlen / CHECKPOINT_STEPS)
        hc = u32.new_empty((b, d, nblocks, A32.shape[1]) if save else (0, 0, 0, 0))
        y = torch.empty_like(u32)
        arrays = (_np(u32), _np(delta32), _np(_f32(delta_bias), _EMPTY1), _np(A32), _np(Bt), _np(Ct),
                  _np(_f32(D), _EMPTY1), _np(_f32(z), _EMPTY3), _np(y), _np(hc))
        forward_lanes, _ = _kernels(A32.shape[1])
        _run([(*arrays, i, c0, c1, d // Bt.shape[1], delta_softplus, save) for i, c0, c1, _ in _tasks(b, d)],
             forward_lanes)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hc)
            ctx.delta_softplus = delta_softplus
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, hc = ctx.saved_tensors
        b, d, seqlen = u.shape
        n = A.shape[1]
        A32, Bt, Ct = _padded_states(A, B, C)
        groups, padded = Bt.shape[1], A32.shape[1]
        u32 = _f32(u)
        tasks = _tasks(b, d)
        parts = max(task[3] for task in tasks) + 1
        g_u, g_delta = torch.empty_like(u32), torch.empty_like(u32)
        g_z = torch.empty_like(u32) if z is not None else None
        g_A, g_D, g_bias = u32.new_empty(b, d, padded), u32.new_empty(b, d), u32.new_empty(b, d)
        g_Bp = u32.new_zeros(b, parts, groups, seqlen, padded)
        g_Cp = u32.new_zeros(b, parts, groups, seqlen, padded)
        arrays = (_np(u32), _np(_f32(delta)), _np(_f32(delta_bias), _EMPTY1), _np(A32), _np(Bt), _np(Ct),
                  _np(_f32(D), _EMPTY1), _np(_f32(z), _EMPTY3), _np(_f32(gout)), _np(hc), _np(g_u), _np(g_delta),
                  _np(g_z, _EMPTY3), _np(g_A), _np(g_D), _np(g_bias), _np(g_Bp), _np(g_Cp))
        _, backward_lanes = _kernels(padded)
        _run([(*arrays, i, c0, c1, p, d // groups, ctx.delta_softplus) for i, c0, c1, p in tasks], backward_lanes)

        g_B = g_Bp.sum(1)[..., :n].transpose(2, 3)  # (b, g, l, N) -> (b, g, n, l)
        g_C = g_Cp.sum(1)[..., :n].transpose(2, 3)
        g_B = g_B.squeeze(1) if B.dim() == 3 else g_B
        g_C = g_C.squeeze(1) if C.dim() == 3 else g_C
        return (g_u.to(u.dtype), g_delta.to(delta.dtype), g_A.sum(0)[:, :n].to(A.dtype), g_B.to(B.dtype),
                g_C.to(C.dtype), None if D is None else g_D.sum(0).to(D.dtype), None if z is None else g_z.to(z.dtype),
                None if delta_bias is None else g_bias.sum(0).to(delta_bias.dtype), None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The compiled CPU scan: ``selective_scan_torch``'s arguments, checks and results (to float rounding)."""
    if A.is_complex():
        raise NotImplementedError('selective_scan: real A only')
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if B.dim() == 2 or C.dim() == 2:
        b, d, l = u.shape
        B, C = _per_channel(B, b, d, l), _per_channel(C, b, d, l)
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
