"""Selective scan on (b, d, l) CPU tensors, lane by lane, compiled at run time by numba (optional).

Why a second CPU kernel: callers of the (b, d, l) API (``selective_scan``) hold u, delta, z with time contiguous
and B, C as (b, g, n, l). The token-major kernel of :mod:`.scan_cpu` would need transposed copies of all of them
(and of y), which cost time and as much memory again as the inputs. Here each (batch, channel) lane walks its own
row in time order, reading every tensor where it lies (any batch and channel strides, unit time stride), and the
vectors run over the n states.

A task is a few lanes of one (batch, group), taken block by block of :data:`CHECKPOINT_STEPS` steps: the block of
B and C is transposed once into stack scratch (steps x states) for all the task's lanes, then per lane
softplus(delta + bias), silu(z) and the decays exp(dt A) are computed for the whole block (vectorized over time or
states, no dependence between them) before the recurrence h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t runs over it.
fp32 state, no division by decays, no clamping, any length. Tasks are cut by shape only, never by the thread
count, and the B and C gradients are summed per task into their own slices, then added in task order, so the
results, gradients included, do not depend on the thread count. The backward runs the adjoint recurrence in
reverse a block at a time, recomputing the block's states from the state the forward saved at its start
(O(b d n l / 64) memory).
"""
import functools
import math
from typing import List, Optional, Tuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core.ccallback import CFunc
from numba.extending import intrinsic

from .numba_runtime import (
    FLAGS,
    MATH_FLAGS,
    SOURCE_KEY,
    channels_contiguous,
    exp32,
    f32_at,
    flat,
    log1p_small,
    prefetch_row,
    row_array,
    row_array2,
    run_tasks,
    stack_f32,
    task_entry,
)
from .scan_inputs import checked_b_c

__all__ = ['selective_scan_cpu']

# The state before every 64 steps is kept for the backward: at l = 65536, d = 120, n = 16 that is 7.9 MB beside
# y's 31.5 MB (32 steps would double it; longer blocks grow the stack scratch past L1).
CHECKPOINT_STEPS = 64
STATE_MULTIPLE = 16  # scratch rows are sized for the states rounded up to this (A = B = C = 0 there: no effect)
LANES = 16  # lanes per task at most: the transposed B and C block serves all of them
# The backward's B and C gradients are summed per task into one (b, g, n, l) slice each: wider tasks where the
# slices of all tasks would pass this many elements (64 MB in fp32) per gradient.
PARTIAL_ELEMENTS = 1 << 24

# rows of the stride table the kernels get: (batch, channel or group, state) strides per tensor; time stride 1
U, DELTA, Z, B_, C_, Y, GOUT = range(7)
VEC = 16  # floats per vector in the state loops: one AVX-512 register, two AVX2 ones
_FAST = ('contract', 'nsz', 'arcp')  # the intrinsics' float flags: multiply-adds fused, no reassociation


class _Vectors:
    """LLVM IR for VEC-float vectors at offsets of 1-D float32 arrays, for the intrinsics below."""

    def __init__(self, context, builder, signature, args):
        self.context, self.builder, self.signature, self.args = context, builder, signature, args
        self.type = ir.VectorType(ir.FloatType(), VEC)

    def pointer(self, array, offset):
        data = self.context.make_array(self.signature.args[array])(self.context, self.builder, self.args[array]).data
        return self.builder.bitcast(self.builder.gep(data, [self.args[offset]]), self.type.as_pointer())

    def load(self, array, offset):
        return self.builder.load(self.pointer(array, offset), align=4)

    def store(self, value, array, offset):
        self.builder.store(value, self.pointer(array, offset), align=4)

    def splat(self, scalar):
        vector = self.builder.insert_element(ir.Constant(self.type, ir.Undefined), self.args[scalar],
                                             ir.Constant(ir.IntType(32), 0))
        return self.builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), VEC), [0] * VEC))

    def mul(self, a, b):
        return self.builder.fmul(a, b, flags=_FAST)

    def add(self, a, b):
        return self.builder.fadd(a, b, flags=_FAST)

    def total(self, v):
        """The sum of v's elements: halves added until one is left (a fixed order)."""
        width = VEC
        while width > 1:
            width //= 2
            low, high = (self.builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                                       list(range(first, first + width))))
                         for first in (0, width))
            v = self.builder.fadd(low, high, flags=_FAST)
        return self.builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def _f32_array(x):
    return isinstance(x, types.Array) and x.dtype == types.float32 and x.ndim == 1


@intrinsic
def _state_step(typingctx, h0, o0, h1, o1, dec, bt, ct, o, du):
    """One step for VEC states: h1[o1:] = dec[o:] h0[o0:] + du bt[o:]; returns <h1, ct[o:]> (VEC floats from each
    offset). Why an intrinsic: with the states a loop of constant length, LLVM unrolled it and kept each state in
    its own scalar register (16 scalar chains, 4x slower); here they are one vector by construction."""
    if not all(_f32_array(x) for x in (h0, h1, dec, bt, ct)):
        return None

    def codegen(context, builder, signature, args):
        v = _Vectors(context, builder, signature, args)
        h = v.add(v.mul(v.load(4, 7), v.load(0, 1)), v.mul(v.splat(8), v.load(5, 7)))
        v.store(h, 2, 3)
        return v.total(v.mul(h, v.load(6, 7)))

    return types.float32(h0, o0, h1, o1, dec, bt, ct, o, du), codegen


@intrinsic
def _adjoint_step(typingctx, gh, a, ga, os, hs, o0, o1, dec, bt, ct, gbt, gct, o, gy, du, dt):
    """The adjoint of :func:`_state_step` for VEC states (state rows gh, a, ga at ``os``; step rows at ``o``; the
    states before and after the step at hs[o0:], hs[o1:]): g = gh + gy ct is the adjoint of h_t; adds gy h_t to
    gct and g du to gbt, g h_{t-1} dt e to ga, sets gh = g e (the adjoint of h_{t-1}, e = dec); returns
    (<g, bt>, <g e h_{t-1}, a>), the parts of the u and delta gradients."""
    if not all(_f32_array(x) for x in (gh, a, ga, hs, dec, bt, ct, gbt, gct)):
        return None

    def codegen(context, builder, signature, args):
        v = _Vectors(context, builder, signature, args)
        gys = v.splat(13)
        g = v.add(v.load(0, 3), v.mul(gys, v.load(9, 12)))
        v.store(v.add(v.load(11, 12), v.mul(gys, v.load(4, 6))), 11, 12)
        gdu = v.total(v.mul(g, v.load(8, 12)))
        v.store(v.add(v.load(10, 12), v.mul(g, v.splat(14))), 10, 12)
        g = v.mul(g, v.load(7, 12))
        q = v.mul(g, v.load(4, 5))
        gda = v.total(v.mul(q, v.load(1, 3)))
        v.store(v.add(v.load(2, 3), v.mul(q, v.splat(15))), 2, 3)
        v.store(g, 0, 3)
        return context.make_tuple(builder, signature.return_type, [gdu, gda])

    return types.UniTuple(types.float32, 2)(gh, a, ga, os, hs, o0, o1, dec, bt, ct, gbt, gct, o, gy, du, dt), codegen


# Helpers are not cached on their own: compiled into each kernel, they are cached with it (and its source key).
@numba.njit(fastmath=MATH_FLAGS, error_model='numpy')
def _dt_block(delta, bias, softplus, steps, dt):
    """dt = softplus(delta + bias) (or delta + bias) for a block; softplus(x) = max(x, 0) + log1p(exp(-|x|)),
    within 3 ulp of torch's."""
    if softplus:
        for s in range(steps):
            x = delta[s] + bias
            dt[s] = max(x, np.float32(0.0)) + log1p_small(exp32(-abs(x)))
    else:
        for s in range(steps):
            dt[s] = delta[s] + bias


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy')
def _dt_slope_block(delta, bias, softplus, steps, dt, slope):
    """:func:`_dt_block` and its derivative sigmoid(x) in ``slope`` (for the backward)."""
    if softplus:
        for s in range(steps):
            x = delta[s] + bias
            e = exp32(-abs(x))
            dt[s] = max(x, np.float32(0.0)) + log1p_small(e)
            r = np.float32(1.0) / (np.float32(1.0) + e)
            slope[s] = r if x > np.float32(0.0) else e * r
    else:
        for s in range(steps):
            dt[s] = delta[s] + bias
            slope[s] = np.float32(1.0)


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy')
def _gate_block(z, steps, gate, sig):
    """silu(z) = z sigmoid(z) for a block, and sigmoid(z) (for the gradient)."""
    for s in range(steps):
        zz = z[s]
        sg = np.float32(1.0) / (np.float32(1.0) + exp32(-zz))
        sig[s] = sg
        gate[s] = zz * sg


@numba.njit(error_model='numpy')
def _load_block(x, base, stride, n, npad, steps, out):
    """out[s npad + i] = x[base + i stride + s]: a block of B or C, states last, for the n real states."""
    for i in range(n):
        row = numba.carray(f32_at(x, base + i * stride), steps)
        for s in range(steps):
            out[s * npad + i] = row[s]


@numba.njit(error_model='numpy')
def _store_block(grad, base, stride, n, npad, steps, out):
    """out[base + i stride + s] = grad[s npad + i]: a task's block of B or C gradient, back to (n, l)."""
    for i in range(n):
        row = numba.carray(f32_at(out, base + i * stride), steps)
        for s in range(steps):
            row[s] = grad[s * npad + i]


@numba.njit(error_model='numpy')
def _prefetch_rows(x, base, stride, rows, t, seqlen):
    """Prefetch the next block (steps t..t+K) of ``rows`` rows of x: the blocks of a task's rows are far apart, and
    more rows than hardware prefetchers follow (and the backward walks them downwards)."""
    if 0 <= t < seqlen:
        for i in range(rows):
            prefetch_row(x, base + i * stride + t, min(CHECKPOINT_STEPS, seqlen - t))


@functools.lru_cache(maxsize=None)
def _kernels(npad: int) -> Tuple[CFunc, CFunc]:
    """The task entries of the forward and backward task kernels, with scratch for ``npad`` states (a multiple of
    VEC): the states run VEC at a time through :func:`_state_step` and :func:`_adjoint_step`; the padded ones have
    A = B = C = 0 in the scratch and stay 0. The scratch lives on the stack (:func:`~.numba_runtime.stack_f32`), whose
    sizes must be compile-time constants, and where the compiler knows no argument aliases it. Compiled once per
    ``npad``, cached on disk."""
    key = SOURCE_KEY
    K = CHECKPOINT_STEPS
    block, hblock = K * npad, (K + 1) * npad

    @numba.njit(fastmath=MATH_FLAGS, error_model='numpy')
    def decays(dt, a, dec):
        """dec[s npad + i] = exp(dt[s] a[i]) for a whole block: constant trip counts, so it vectorizes."""
        for s in range(K):
            for i in range(npad):
                dec[s * npad + i] = exp32(dt[s] * a[i])

    @numba.njit(nogil=True, fastmath=FLAGS, error_model='numpy', cache=True)
    def forward_task(u, delta, z, Bm, Cm, y, hc, geo, A, bias, D, batch, group, c0, c1, n, seqlen, softplus, save):
        """y for lanes c0..c1 of one batch and group: (<C_t, h_t> + D u_t) silu(z_t); ``save``: the state before
        every block into hc (b, d, blocks, n)."""
        assert key == SOURCE_KEY
        d = bias.shape[0]
        has_z, has_d = z.shape[0] > 0, D.shape[0] > 0
        nblocks = (seqlen + K - 1) // K
        hl = np.zeros((c1 - c0, npad), np.float32)  # each lane's state between blocks
        h, a = numba.carray(stack_f32(npad), npad), numba.carray(stack_f32(npad), npad)
        Bt, Ct, dec = numba.carray(stack_f32(block), block), numba.carray(stack_f32(block), block), numba.carray(
            stack_f32(block), block)
        dt, du = numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K)
        gate, sig, yb = numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K)
        for x in (Bt, Ct, dec):
            x[:] = np.float32(0.0)
        for x in (dt, du, gate, sig, yb, h, a):
            x[:] = np.float32(0.0)
        pb = batch * geo[B_, 0] + group * geo[B_, 1]
        pc = batch * geo[C_, 0] + group * geo[C_, 1]
        for j in range(nblocks):
            t0 = j * K
            steps = min(K, seqlen - t0)
            _load_block(Bm, pb + t0, geo[B_, 2], n, npad, steps, Bt)
            _load_block(Cm, pc + t0, geo[C_, 2], n, npad, steps, Ct)
            _prefetch_rows(Bm, pb, geo[B_, 2], n, t0 + K, seqlen)
            _prefetch_rows(Cm, pc, geo[C_, 2], n, t0 + K, seqlen)
            for c in range(c0, c1):
                for i in range(n):
                    a[i] = A[c * n + i]
                    h[i] = hl[c - c0, i]
                if save:
                    hrow = numba.carray(f32_at(hc, ((batch * d + c) * nblocks + j) * n), n)
                    for i in range(n):
                        hrow[i] = h[i]
                pu, pd = batch * geo[U, 0] + c * geo[U, 1], batch * geo[DELTA, 0] + c * geo[DELTA, 1]
                pz = batch * geo[Z, 0] + c * geo[Z, 1]
                _prefetch_rows(u, pu, 0, 1, t0 + K, seqlen)
                _prefetch_rows(delta, pd, 0, 1, t0 + K, seqlen)
                ur = numba.carray(f32_at(u, pu + t0), steps)
                _dt_block(numba.carray(f32_at(delta, pd + t0), steps), bias[c], softplus, steps, dt)
                for s in range(steps):
                    du[s] = dt[s] * ur[s]
                decays(dt, a, dec)  # the decays first: exps with no dependence between them
                for s in range(steps):
                    acc = np.float32(0.0)
                    for k in range(0, npad, VEC):
                        acc += _state_step(h, k, h, k, dec, Bt, Ct, s * npad + k, du[s])
                    yb[s] = acc
                for i in range(n):
                    hl[c - c0, i] = h[i]
                if has_d:
                    dc = D[c]
                    for s in range(steps):
                        yb[s] += dc * ur[s]
                yr = numba.carray(f32_at(y, batch * geo[Y, 0] + c * geo[Y, 1] + t0), steps)
                if has_z:
                    _prefetch_rows(z, pz, 0, 1, t0 + K, seqlen)
                    _gate_block(numba.carray(f32_at(z, pz + t0), steps), steps, gate, sig)
                    for s in range(steps):
                        yr[s] = yb[s] * gate[s]
                else:
                    for s in range(steps):
                        yr[s] = yb[s]

    @numba.njit(nogil=True, fastmath=FLAGS, error_model='numpy', cache=True)
    def backward_task(u, delta, z, Bm, Cm, gout, hc, g_u, g_delta, g_z, g_Bp, g_Cp, geo, A, bias, D, g_A, g_D, g_bias,
                      batch, group, c0, c1, pg, n, seqlen, softplus):
        """The adjoint recurrence for lanes c0..c1 of one batch and group, block by block from the last, each
        block's states recomputed from hc. Writes the lanes' g_u, g_delta, g_z rows, the task's B and C gradients
        (summed over its lanes, in lane order) into its (n, l) slice of g_Bp / g_Cp at offset ``pg``, and the long
        sums g_A (b, d, n), g_D, g_bias (b, d) in float64, a block at a time."""
        assert key == SOURCE_KEY
        d = bias.shape[0]
        has_z, has_d = z.shape[0] > 0, D.shape[0] > 0
        nblocks = (seqlen + K - 1) // K
        lanes = c1 - c0
        ghl = np.zeros((lanes, npad), np.float32)  # each lane's adjoint state between blocks
        ga64 = np.zeros((lanes, n), np.float64)
        gD64, gbias64 = np.zeros(lanes, np.float64), np.zeros(lanes, np.float64)
        hs = numba.carray(stack_f32(hblock), hblock)
        Bt, Ct, dec = numba.carray(stack_f32(block), block), numba.carray(stack_f32(block), block), numba.carray(
            stack_f32(block), block)
        gBt, gCt = numba.carray(stack_f32(block), block), numba.carray(stack_f32(block), block)
        a, gh, ga = numba.carray(stack_f32(npad), npad), numba.carray(stack_f32(npad), npad), numba.carray(
            stack_f32(npad), npad)
        dt, slope, du = numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K)
        gate, sig, ypre = numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K)
        gy, gdu_s, gda_s = numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K), numba.carray(stack_f32(K), K)
        for x in (Bt, Ct, gBt, gCt, dec):
            x[:] = np.float32(0.0)
        hs[:] = np.float32(0.0)
        for x in (dt, slope, du, gate, sig, ypre, gy, gdu_s, gda_s, a, gh, ga):
            x[:] = np.float32(0.0)
        pb = batch * geo[B_, 0] + group * geo[B_, 1]
        pc = batch * geo[C_, 0] + group * geo[C_, 1]
        for j in range(nblocks - 1, -1, -1):
            t0 = j * K
            steps = min(K, seqlen - t0)
            _load_block(Bm, pb + t0, geo[B_, 2], n, npad, steps, Bt)
            _load_block(Cm, pc + t0, geo[C_, 2], n, npad, steps, Ct)
            _prefetch_rows(Bm, pb, geo[B_, 2], n, t0 - K, seqlen)
            _prefetch_rows(Cm, pc, geo[C_, 2], n, t0 - K, seqlen)
            gBt[:] = np.float32(0.0)
            gCt[:] = np.float32(0.0)
            for c in range(c0, c1):
                lane = c - c0
                for i in range(n):
                    a[i] = A[c * n + i]
                    gh[i] = ghl[lane, i]
                    ga[i] = np.float32(0.0)
                hrow = numba.carray(f32_at(hc, ((batch * d + c) * nblocks + j) * n), n)
                for i in range(n):
                    hs[i] = hrow[i]
                pu, pd = batch * geo[U, 0] + c * geo[U, 1], batch * geo[DELTA, 0] + c * geo[DELTA, 1]
                pz, po = batch * geo[Z, 0] + c * geo[Z, 1], batch * geo[GOUT, 0] + c * geo[GOUT, 1]
                for x, p in ((u, pu), (delta, pd), (gout, po)):
                    _prefetch_rows(x, p, 0, 1, t0 - K, seqlen)
                ur, gor = numba.carray(f32_at(u, pu + t0), steps), numba.carray(f32_at(gout, po + t0), steps)
                _dt_slope_block(numba.carray(f32_at(delta, pd + t0), steps), bias[c], softplus, steps, dt, slope)
                for s in range(steps):
                    du[s] = dt[s] * ur[s]
                decays(dt, a, dec)
                for s in range(steps):  # the block's states again
                    acc = np.float32(0.0)
                    for k in range(0, npad, VEC):
                        acc += _state_step(hs, s * npad + k, hs, (s + 1) * npad + k, dec, Bt, Ct, s * npad + k, du[s])
                    ypre[s] = acc
                dc = D[c] if has_d else np.float32(0.0)
                if has_z:
                    _prefetch_rows(z, pz, 0, 1, t0 - K, seqlen)
                    zr = numba.carray(f32_at(z, pz + t0), steps)
                    _gate_block(zr, steps, gate, sig)
                    for s in range(steps):
                        gy[s] = gor[s] * gate[s]  # gradient of the pre-gate output
                else:
                    for s in range(steps):
                        gy[s] = gor[s]
                for r in range(steps):
                    s = steps - 1 - r
                    gdu = np.float32(0.0)
                    gda = np.float32(0.0)
                    for k in range(0, npad, VEC):
                        o = s * npad + k
                        x_u, x_a = _adjoint_step(gh, a, ga, k, hs, o, o + npad, dec, Bt, Ct, gBt, gCt, o, gy[s], du[s],
                                                 dt[s])
                        gdu += x_u
                        gda += x_a
                    gdu_s[s] = gdu
                    gda_s[s] = gda
                for i in range(n):
                    ghl[lane, i] = gh[i]
                    ga64[lane, i] += ga[i]
                gur = numba.carray(f32_at(g_u, (batch * d + c) * seqlen + t0), steps)
                gdr = numba.carray(f32_at(g_delta, (batch * d + c) * seqlen + t0), steps)
                gbias = np.float32(0.0)
                gD = np.float32(0.0)
                for s in range(steps):
                    gdel = (gda_s[s] + gdu_s[s] * ur[s]) * slope[s]
                    gdr[s] = gdel
                    gbias += gdel
                    gur[s] = gdu_s[s] * dt[s] + gy[s] * dc
                    gD += gy[s] * ur[s]
                gbias64[lane] += gbias
                gD64[lane] += gD
                if has_z:
                    gzr = numba.carray(f32_at(g_z, (batch * d + c) * seqlen + t0), steps)
                    for s in range(steps):
                        sg = sig[s]
                        ypre_s = ypre[s] + dc * ur[s]
                        gzr[s] = gor[s] * ypre_s * sg * (np.float32(1.0) + zr[s] * (np.float32(1.0) - sg))
            _store_block(gBt, pg + t0, seqlen, n, npad, steps, g_Bp)
            _store_block(gCt, pg + t0, seqlen, n, npad, steps, g_Cp)
        for lane in range(lanes):
            c = c0 + lane
            for i in range(n):
                g_A[(batch * d + c) * n + i] = ga64[lane, i]
            g_D[batch * d + c] = gD64[lane]
            g_bias[batch * d + c] = gbias64[lane]

    # the entries call their kernel by the global name ``kernel`` (see task_entry); they close over ints only
    def forward_entry(row):
        """:func:`forward_task` on a row of :func:`~.numba_runtime.task_table`."""
        if key != SOURCE_KEY or npad < 0:  # never: the ints are here for numba's cache index (see scan_cpu)
            return
        r, f = numba.carray(row, 31), np.float32
        kernel(row_array(r, 0, f), row_array(r, 2, f), row_array(r, 4, f), row_array(r, 6, f),  # noqa: F821
               row_array(r, 8, f), row_array(r, 10, f), row_array(r, 12, f), row_array2(r, 14, np.int64),
               row_array(r, 17, f), row_array(r, 19, f), row_array(r, 21, f), r[23], r[24], r[25], r[26], r[27],
               r[28], r[29] != 0, r[30] != 0)

    def backward_entry(row):
        """:func:`backward_task` on a row of :func:`~.numba_runtime.task_table`."""
        if key != SOURCE_KEY or npad < 0:
            return
        r, f, f64 = numba.carray(row, 47), np.float32, np.float64
        kernel(row_array(r, 0, f), row_array(r, 2, f), row_array(r, 4, f), row_array(r, 6, f),  # noqa: F821
               row_array(r, 8, f), row_array(r, 10, f), row_array(r, 12, f), row_array(r, 14, f),
               row_array(r, 16, f), row_array(r, 18, f), row_array(r, 20, f), row_array(r, 22, f),
               row_array2(r, 24, np.int64), row_array(r, 27, f), row_array(r, 29, f), row_array(r, 31, f),
               row_array(r, 33, f64), row_array(r, 35, f64), row_array(r, 37, f64), r[39], r[40], r[41], r[42],
               r[43], r[44], r[45], r[46] != 0)

    return task_entry(forward_entry, forward_task), task_entry(backward_entry, backward_task)


def _states_padded(n: int) -> int:
    return -(-n // STATE_MULTIPLE) * STATE_MULTIPLE


def _lane_tasks(b: int, d: int, groups: int, lanes: int) -> List[Tuple[int, int, int, int, int]]:
    """(batch, group, first channel, end channel, part) for the fewest runs of at most ``lanes`` channels that
    cover each group, as even as they can be; ``part`` numbers the runs of a (batch, group) from 0. Depends on the
    shapes only."""
    per_group = d // groups
    count = -(-per_group // lanes)
    bounds = [g * per_group + p * per_group // count for g in range(groups) for p in range(count + 1)]
    return [(i, g, bounds[g * (count + 1) + p], bounds[g * (count + 1) + p + 1], p) for i in range(b)
            for g in range(groups) for p in range(count)]


def _backward_lanes(b: int, d: int, groups: int, n: int, seqlen: int) -> int:
    """Lanes per backward task: LANES, or more where the per-task gradient slices would pass PARTIAL_ELEMENTS."""
    per_group = d // groups
    most_parts = max(1, PARTIAL_ELEMENTS // max(1, b * groups * n * seqlen))
    return max(LANES, -(-per_group // most_parts))


def _strides(tensors: List[Optional[torch.Tensor]]) -> np.ndarray:
    """(batch, channel or group, state) strides of (b, d, l) and (b, g, n, l) tensors, a row each (0s for None)."""
    rows = [(0, 0, 0) if x is None else (x.stride(0), x.stride(1), x.stride(2) if x.dim() == 4 else 0)
            for x in tensors]
    return np.array(rows, np.int64)


def _sum_batches(x: torch.Tensor) -> torch.Tensor:
    """x.sum(0), added in batch order (a reduction of a few rows may be split by thread count); zeros for b = 0."""
    if len(x) == 0:
        return x.sum(0)
    total = x[0].clone()
    for row in x[1:]:
        total += row
    return total


class _SelectiveScanLanes(torch.autograd.Function):
    """u, delta, z: (b, d, l) and B, C: (b, g, n, l), float32 with unit time stride; y: (b, d, l)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, save):
        b, d, seqlen = u.shape
        groups, n = B.shape[1], B.shape[2]
        A32 = A.detach().float().contiguous()  # the small parameters as fp32 rows
        bias = u.new_zeros(d) if delta_bias is None else delta_bias.detach().float().contiguous()
        D32 = None if D is None else D.detach().float().contiguous()
        hc = u.new_empty(b, d, math.ceil(seqlen / CHECKPOINT_STEPS), n) if save else None
        y = u.new_empty(b, d, seqlen)
        arrays = (flat(u), flat(delta), flat(z), flat(B), flat(C), flat(y), flat(hc),
                  _strides([u, delta, z, B, C, y]), flat(A32), flat(bias), flat(D32))
        forward_entry, _ = _kernels(_states_padded(n))
        run_tasks([(*arrays, i, g, c0, c1, n, seqlen, delta_softplus, save)
                   for i, g, c0, c1, _ in _lane_tasks(b, d, groups, LANES)], forward_entry)
        if save:
            ctx.save_for_backward(u, delta, B, C, z, hc, A32, bias, D32)
            ctx.options = (delta_softplus, A.dtype, None if D is None else D.dtype,
                           None if delta_bias is None else delta_bias.dtype)
        return y

    @staticmethod
    def backward(ctx, gout):
        u, delta, B, C, z, hc, A32, bias, D32 = ctx.saved_tensors
        delta_softplus, A_dtype, D_dtype, bias_dtype = ctx.options
        b, d, seqlen = u.shape
        groups, n = B.shape[1], B.shape[2]
        gout = channels_contiguous(gout)
        tasks = _lane_tasks(b, d, groups, _backward_lanes(b, d, groups, n, seqlen))
        nparts = max(task[4] for task in tasks) + 1 if tasks else 1
        g_u, g_delta = u.new_empty(b, d, seqlen), u.new_empty(b, d, seqlen)
        g_z = None if z is None else u.new_empty(b, d, seqlen)
        g_Bp, g_Cp = u.new_empty(nparts, b, groups, n, seqlen), u.new_empty(nparts, b, groups, n, seqlen)
        g_A = torch.empty(b, d, n, dtype=torch.float64)
        g_D, g_bias = torch.empty(b, d, dtype=torch.float64), torch.empty(b, d, dtype=torch.float64)
        arrays = (flat(u), flat(delta), flat(z), flat(B), flat(C), flat(gout), flat(hc), flat(g_u), flat(g_delta),
                  flat(g_z), flat(g_Bp), flat(g_Cp), _strides([u, delta, z, B, C, None, gout]), flat(A32), flat(bias),
                  flat(D32), g_A.view(-1).numpy(), g_D.view(-1).numpy(), g_bias.view(-1).numpy())
        _, backward_entry = _kernels(_states_padded(n))
        run_tasks([(*arrays, i, g, c0, c1, g_Bp[p, i, g].storage_offset(), n, seqlen, delta_softplus)
                   for i, g, c0, c1, p in tasks], backward_entry)
        g_B, g_C = (_sum_batches(x) for x in (g_Bp, g_Cp))  # the parts, in part order
        return (g_u, g_delta, _sum_batches(g_A).to(A_dtype), g_B, g_C,
                None if D_dtype is None else _sum_batches(g_D).to(D_dtype), g_z,
                None if bias_dtype is None else _sum_batches(g_bias).to(bias_dtype), None, None)


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False) -> torch.Tensor:
    """The numba scan behind ``selective_scan`` (b, d, l): ``selective_scan_torch``'s arguments, checks and results
    (to float rounding), y contiguous (b, d, l) in u's dtype as the CUDA kernel returns it. fp32 tensors with unit
    time stride are read in place; anything else (other dtypes, a time-invariant B or C) is converted first."""
    B, C = checked_b_c(u, delta, A, B, C, D, z, delta_bias)
    u32, delta32, z32 = (None if x is None else channels_contiguous(x) for x in (u, delta, z))
    B4, C4 = (channels_contiguous(x.unsqueeze(1) if x.dim() == 3 else x) for x in (B, C))  # (b, g, n, l)
    # checkpoints only for a backward: inside forward, needs_input_grad does not see torch.no_grad()
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                           for x in (u32, delta32, A, B4, C4, D, z32, delta_bias))
    y = _SelectiveScanLanes.apply(u32, delta32, A, B4, C4, D, z32, delta_bias, delta_softplus, save)
    return y.to(u.dtype)
