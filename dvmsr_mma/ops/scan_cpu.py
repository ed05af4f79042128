"""Selective scan for CPU tensors, token-major, compiled at run time by numba (optional: ``pip install numba``).

Why token-major: the Mamba mixer's tensors are (b, l, channels) with channels contiguous: ``in_proj`` makes xz
(b, l, 2d), ``x_proj`` makes x_dbl (b, l, dt_rank + 2n), and ``out_proj`` reads y as (b, l, d). This kernel reads
u, delta, z, B and C where they lie (any batch and time strides, unit channel stride: the halves of xz and the
slices of x_dbl as they are) and writes y as ``out_proj`` reads it, so the mixer makes no transposed or
contiguous copies between its matmuls (ggml's ``ssm_scan`` works the same way). A reverse scan (the backward
branch of MMA's bidirectional mixer) walks time from the end with a negative time stride: no flipped copies.
The mixer calls :func:`selective_scan_tokens` directly; the (b, d, l) API has its own kernel, which reads that
layout in place (:mod:`.scan_lanes`).

Vectorized over channels, fp32 state, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, no division by decays, no
clamping, any length. The work is cut into tasks of (batch, part of the channels) that run without barriers
(:func:`~.numba_runtime.run_tasks`); the parts depend on the shapes only, so the results, gradients included,
do not depend on the thread count. Both passes go K = :data:`CHECKPOINT_STEPS` steps at a time: first the chunk's
rows of dt = softplus(delta + bias), u and the gate, then the recurrence.

What a state update (one step, channel and state) costs:

* forward: one exp (about 13 vector instructions for 16 lanes, the bulk of the time) and two multiply-adds (the
  state and the output's sum over states);
* backward: the chunk's states are recomputed from the state the forward saved at its start (the forward's work
  again; its decays are kept for the reverse pass), then the adjoint recurrence runs in reverse: g = g_h +
  C gy, dC += gy h_t, d(dt u) += B g, dB += (dt u) g, g_h = g exp(dt A), q = g_h h_{t-1}, d(dt) += A q,
  dA += dt q: eight multiply-adds and no exp. That is the least work for these gradients in O(b d n l / K)
  memory: saving every state instead of recomputing would need O(b d n l).

So the backward costs a forward plus about two thirds of one (measured: ``benchmarks/bench_mixer.py``). Every
channel loop runs whole vectors of stack scratch (channels past a part's width are zero there); the input rows
are copied to the stack once and each output row written once, from the stack.
"""
import functools
import math
from typing import List, Optional, Tuple

import numba
import numpy as np
import torch
from numba.core.ccallback import CFunc

from .numba_runtime import (
    FLAGS,
    MATH_FLAGS,
    SOURCE_KEY,
    bases,
    channels_contiguous,
    exp32,
    f32_at,
    flat,
    geometry,
    log1p_small,
    mul_add32,
    parts,
    prefetch_row,
    prefetch_row_for_write,
    row_array,
    row_array2,
    row_array3,
    run_tasks,
    stack_f32,
    task_entry,
)

__all__ = ['selective_scan_tokens_cpu']

CHECKPOINT_STEPS = 32  # the forward keeps the state before every 32 steps for the backward
STATE_MULTIPLE = 16  # scratch rows are sized for the states rounded up to this (one compiled kernel for n <= 16)
FORWARD_WIDTH = 64  # channels per forward task: whole rows of DVMSR's 120 and MMA-T's 96 channels in 2 tasks
BACKWARD_WIDTH = 32  # per backward task: its chunk of states and decays (33 + 32 rows of n x 32) stays in L2
LANES = 16  # channels per vector block: one AVX-512 register, two AVX2 ones

# the rows of numba_runtime.geometry, one per tensor the kernels read or write
U, DELTA, Z, B_, C_, Y, GOUT, GU, GDELTA, GZ, GB, GC = range(12)


@numba.njit(error_model='numpy')
def _row_offsets(p0, stride, steps):
    """p0 + s stride for each step, read back from memory by the row loops: where the compiler can see the rows as
    p0 + s stride, it checks them for overlap with the output over the whole chunk at once, and for a negative
    stride (a reverse scan) it cannot tell, and ran the rows unvectorized (a reverse scan took twice as long)."""
    offsets = np.empty(steps, np.int64)
    for s in range(steps):
        offsets[s] = p0 + s * stride
    return offsets


# Helpers are not cached on their own: compiled into each kernel, they are cached with it (and its source key). They
# take a chunk of rows per call: a call costs the kernel its vector registers (spilled and reloaded around it), which
# per step was a fifth of the backward.
@numba.njit(fastmath=MATH_FLAGS, error_model='numpy')
def _dt_rows(delta, p0, stride, steps, bias, w, softplus, dt, slope, with_slope):
    """dt[s, :w] = softplus(delta + bias) (or delta + bias) for ``steps`` rows of ``delta`` (offsets p0 + s stride);
    softplus(x) = max(x, 0) + log1p(exp(-|x|)), within 3 ulp of torch's. ``with_slope``: its derivative
    sigmoid(x) in ``slope`` (for the backward)."""
    offsets = _row_offsets(p0, stride, steps)
    for s in range(steps):
        row, dr, sr = numba.carray(f32_at(delta, offsets[s]), w), dt[s], slope[s]
        if softplus:
            for c in range(w):
                x = row[c] + bias[c]
                e = exp32(-abs(x))
                dr[c] = max(x, np.float32(0.0)) + log1p_small(e)
                if with_slope:
                    r = np.float32(1.0) / (np.float32(1.0) + e)
                    sr[c] = r if x > np.float32(0.0) else e * r
        else:
            for c in range(w):
                dr[c] = row[c] + bias[c]
                if with_slope:
                    sr[c] = np.float32(1.0)


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy')
def _gate_rows(z, p0, stride, steps, w, gate, sig, zs, keep):
    """silu(z) = z sigmoid(z) in gate[s, :w] for ``steps`` rows of ``z``; ``keep``: sigmoid(z) in ``sig`` and z in
    ``zs`` too (for the gradient)."""
    offsets = _row_offsets(p0, stride, steps)
    for s in range(steps):
        row, gr = numba.carray(f32_at(z, offsets[s]), w), gate[s]
        for c in range(w):
            zz = row[c]
            sg = np.float32(1.0) / (np.float32(1.0) + exp32(-zz))
            gr[c] = zz * sg
            if keep:
                sig[s, c] = sg
                zs[s, c] = zz


@numba.njit(error_model='numpy')
def _copy_rows(x, p0, stride, steps, w, out):
    """out[s, :w] = the ``steps`` rows of ``x`` at offsets p0 + s stride."""
    offsets = _row_offsets(p0, stride, steps)
    for s in range(steps):
        row, o = numba.carray(f32_at(x, offsets[s]), w), out[s]
        for c in range(w):
            o[c] = row[c]


@numba.njit(error_model='numpy')
def _part_setup(A, a, bias, D, n, c0, w):
    """Copy a part's block of A (n, d) into ``a`` (n, width); return the part's rows of bias and D."""
    d = bias.shape[0]
    for i in range(n):
        for c in range(w):
            a[i, c] = A[i * d + c0 + c]
    return numba.carray(f32_at(bias, c0), w), numba.carray(f32_at(D, c0 if D.shape[0] > 0 else 0), w)


@functools.lru_cache(maxsize=None)
def _kernels(npad: int) -> Tuple[CFunc, CFunc]:
    """The task entries of the forward and backward part kernels, with scratch for ``npad`` states (a multiple of
    STATE_MULTIPLE; the loops run the real n). The scratch lives on the stack (:func:`~.numba_runtime.stack_f32`),
    whose sizes must be compile-time constants, and where the compiler knows no argument aliases it, so its loops
    vectorize. Rows are prefetched a chunk ahead, in the order the next chunk will read them. Compiled once per
    ``npad``, cached on disk."""
    key = SOURCE_KEY
    fw, bw, K = FORWARD_WIDTH, BACKWARD_WIDTH, CHECKPOINT_STEPS
    f_states, f_chunk, b_states, b_chunk = npad * fw, K * fw, npad * bw, K * bw
    b_chunk_states, b_chunk_decays = (K + 1) * npad * bw, K * npad * bw

    @numba.njit(nogil=True, fastmath=FLAGS, error_model='numpy', cache=True)
    def forward_part(u, delta, z, Bm, Cm, y, hc, geo, A, bias, D, batch, c0, w, group, n, seqlen, softplus, save):
        """y for channels c0..c0+w of one batch: (<C_t, h_t> + D u_t) silu(z_t), K steps at a time in scan order:
        the chunk's rows of dt, u and the gate first, then the states step by step, then the outputs;
        ``save``: the state before every K steps into hc (b, chunks, n, d)."""
        assert key == SOURCE_KEY
        d = bias.shape[0]
        has_z, has_d = z.shape[0] > 0, D.shape[0] > 0
        nchunks = (seqlen + K - 1) // K
        h = numba.carray(stack_f32(f_states), (npad, fw))
        a = numba.carray(stack_f32(f_states), (npad, fw))
        dts, us = numba.carray(stack_f32(f_chunk), (K, fw)), numba.carray(stack_f32(f_chunk), (K, fw))
        accs, gates = numba.carray(stack_f32(f_chunk), (K, fw)), numba.carray(stack_f32(f_chunk), (K, fw))
        du, d_r = numba.carray(stack_f32(fw), fw), numba.carray(stack_f32(fw), fw)
        wv = -(-w // LANES) * LANES  # whole vectors: the channels past w are 0
        for x in (h, a):  # channels w.. of a row stay 0 (A, dt, u, h), so whole-vector loops can run them
            x[:] = np.float32(0.0)
        for x in (dts, us, accs, gates):
            x[:] = np.float32(0.0)
        du[:] = np.float32(0.0)
        d_r[:] = np.float32(0.0)
        bias_r, D_r = _part_setup(A, a, bias, D, n, c0, w)
        if has_d:
            for c in range(w):
                d_r[c] = D_r[c]
        pu, pd, pz, pb, pc, py = bases(geo, batch, c0, group)[:Y + 1]
        su, sd, sz, sb, sc, sy = geo[U, 2], geo[DELTA, 2], geo[Z, 2], geo[B_, 2], geo[C_, 2], geo[Y, 2]
        for j in range(nchunks):
            t0 = j * K
            steps = min(K, seqlen - t0)
            if save:
                base = ((batch * nchunks + j) * n) * d + c0
                for i in range(n):
                    hrow = numba.carray(f32_at(hc, base + i * d), w)
                    for c in range(w):
                        hrow[c] = h[i, c]
            _dt_rows(delta, pd + t0 * sd, sd, steps, bias_r, w, softplus, dts, dts, False)
            _copy_rows(u, pu + t0 * su, su, steps, w, us)
            for s in range(steps):
                t = t0 + s
                if t + K < seqlen:  # the same step of the next chunk
                    tn = t + K
                    prefetch_row(u, pu + tn * su, w)
                    prefetch_row(delta, pd + tn * sd, w)
                    prefetch_row(Bm, pb + tn * sb, n)
                    prefetch_row(Cm, pc + tn * sc, n)
                    if has_z:
                        prefetch_row(z, pz + tn * sz, w)
                br, cr = numba.carray(f32_at(Bm, pb + t * sb), n), numba.carray(f32_at(Cm, pc + t * sc), n)
                dt, acc, u_s = dts[s], accs[s], us[s]
                for c in range(wv):  # whole rows: 16 scalar stores and a vector load of them stall the load
                    du[c] = dt[c] * u_s[c]
                    acc[c] = np.float32(0.0)
                for v0 in range(0, wv, LANES):  # a vector of channels at a time, through every state
                    for i in range(n):
                        bv, cv = br[i], cr[i]
                        ai, hi = a[i], h[i]
                        for c in range(v0, v0 + LANES):
                            v = mul_add32(exp32(dt[c] * ai[c]), hi[c], du[c] * bv)
                            hi[c] = v
                            acc[c] = mul_add32(v, cv, acc[c])
            if has_z:
                _gate_rows(z, pz + t0 * sz, sz, steps, w, gates, gates, gates, False)
            for s in range(steps):
                acc, yr = accs[s], numba.carray(f32_at(y, py + (t0 + s) * sy), w)
                if has_d:
                    u_s = us[s]
                    for c in range(wv):
                        acc[c] += d_r[c] * u_s[c]
                if has_z:
                    gate = gates[s]
                    for c in range(w):
                        yr[c] = acc[c] * gate[c]
                else:
                    for c in range(w):
                        yr[c] = acc[c]

    @numba.njit(nogil=True, fastmath=FLAGS, error_model='numpy', cache=True)
    def backward_part(u, delta, z, Bm, Cm, gout, hc, g_u, g_delta, g_z, g_Bp, g_Cp, geo, A, bias, D, g_A, g_D, g_bias,
                      batch, c0, w, group, n, seqlen, softplus):
        """The adjoint recurrence for channels c0..c0+w of one batch, chunk by chunk from the last, each chunk's
        states recomputed from hc. Writes g_u, g_delta, g_z rows, this part's B and C gradients (summed over its
        channels) into g_Bp / g_Cp, and the long sums g_A (b, n, d), g_D, g_bias (b, d) in float64.

        Every loop over channels runs whole rows of the stack scratch (a constant count, zero past w): the input
        rows are copied there once, and each output row is written once, from the stack; a vector load then never
        reads a row that narrower stores have just written (such a load waits for the stores to retire)."""
        assert key == SOURCE_KEY
        d = bias.shape[0]
        has_z, has_d = z.shape[0] > 0, D.shape[0] > 0
        nchunks = (seqlen + K - 1) // K
        hs = numba.carray(stack_f32(b_chunk_states), (K + 1, npad, bw))
        dec = numba.carray(stack_f32(b_chunk_decays), (K, npad, bw))
        # per step of the chunk: dt, its slope, dt u, u, the pre-gate output, silu(z), sigmoid(z), z, the gradient
        dts, slopes = numba.carray(stack_f32(b_chunk), (K, bw)), numba.carray(stack_f32(b_chunk), (K, bw))
        dus, us = numba.carray(stack_f32(b_chunk), (K, bw)), numba.carray(stack_f32(b_chunk), (K, bw))
        ypre, gates = numba.carray(stack_f32(b_chunk), (K, bw)), numba.carray(stack_f32(b_chunk), (K, bw))
        sigs, zs = numba.carray(stack_f32(b_chunk), (K, bw)), numba.carray(stack_f32(b_chunk), (K, bw))
        gos = numba.carray(stack_f32(b_chunk), (K, bw))
        a, gh = numba.carray(stack_f32(b_states), (npad, bw)), numba.carray(stack_f32(b_states), (npad, bw))
        ga = numba.carray(stack_f32(b_states), (npad, bw))
        gy, gdu, gda = numba.carray(stack_f32(bw), bw), numba.carray(stack_f32(bw), bw), numba.carray(stack_f32(bw), bw)
        d_r, gD_c = numba.carray(stack_f32(bw), bw), numba.carray(stack_f32(bw), bw)
        gbias_c, gu_r = numba.carray(stack_f32(bw), bw), numba.carray(stack_f32(bw), bw)
        gdel_r, gz_r = numba.carray(stack_f32(bw), bw), numba.carray(stack_f32(bw), bw)
        ga64 = np.zeros((n, w), np.float64)
        gD64, gbias64 = np.zeros(w, np.float64), np.zeros(w, np.float64)
        for x in (hs, dec):
            x[:] = np.float32(0.0)
        for x in (dts, slopes, dus, us, ypre, gates, sigs, zs, gos):
            x[:] = np.float32(0.0)
        for x in (a, gh, ga):
            x[:] = np.float32(0.0)
        for x in (gy, gdu, gda, d_r, gD_c, gbias_c, gu_r, gdel_r, gz_r):
            x[:] = np.float32(0.0)
        bias_r, D_r = _part_setup(A, a, bias, D, n, c0, w)
        if has_d:
            for c in range(w):
                d_r[c] = D_r[c]
        pu, pd, pz, pb, pc, _, pgo, pgu, pgd, pgz, pgb, pgc = bases(geo, batch, c0, group)
        for j in range(nchunks - 1, -1, -1):
            t0 = j * K
            steps = min(K, seqlen - t0)
            base = ((batch * nchunks + j) * n) * d + c0
            for i in range(n):
                hrow = numba.carray(f32_at(hc, base + i * d), w)
                for c in range(w):
                    hs[0, i, c] = hrow[c]
            _dt_rows(delta, pd + t0 * geo[DELTA, 2], geo[DELTA, 2], steps, bias_r, w, softplus, dts, slopes, True)
            _copy_rows(u, pu + t0 * geo[U, 2], geo[U, 2], steps, w, us)
            _copy_rows(gout, pgo + t0 * geo[GOUT, 2], geo[GOUT, 2], steps, w, gos)
            if has_z:
                _gate_rows(z, pz + t0 * geo[Z, 2], geo[Z, 2], steps, w, gates, sigs, zs, True)
            for s in range(steps):  # the chunk's states again, and what the reverse pass reads per step
                t = t0 + s
                if t >= K:  # the same step of the chunk done next
                    tp = t - K
                    prefetch_row(u, pu + tp * geo[U, 2], w)
                    prefetch_row(delta, pd + tp * geo[DELTA, 2], w)
                    prefetch_row(gout, pgo + tp * geo[GOUT, 2], w)
                    prefetch_row(Bm, pb + tp * geo[B_, 2], n)
                    prefetch_row(Cm, pc + tp * geo[C_, 2], n)
                    prefetch_row_for_write(g_u, pgu + tp * geo[GU, 2], w)
                    prefetch_row_for_write(g_delta, pgd + tp * geo[GDELTA, 2], w)
                    if has_z:
                        prefetch_row(z, pz + tp * geo[Z, 2], w)
                        prefetch_row_for_write(g_z, pgz + tp * geo[GZ, 2], w)
                br = numba.carray(f32_at(Bm, pb + t * geo[B_, 2]), n)
                cr = numba.carray(f32_at(Cm, pc + t * geo[C_, 2]), n)
                dt, du, acc, us_s = dts[s], dus[s], ypre[s], us[s]
                for c in range(bw):
                    du[c] = dt[c] * us_s[c]
                    acc[c] = np.float32(0.0)
                for i in range(n):
                    ai, di = a[i], dec[s, i]
                    for c in range(bw):
                        di[c] = exp32(dt[c] * ai[c])
                for i in range(n):
                    bv, cv = br[i], cr[i]
                    h0, h1, di = hs[s, i], hs[s + 1, i], dec[s, i]
                    for c in range(bw):
                        v = mul_add32(di[c], h0[c], du[c] * bv)  # as the forward computes it
                        h1[c] = v
                        acc[c] = mul_add32(v, cv, acc[c])
                if has_d:
                    for c in range(bw):
                        acc[c] += d_r[c] * us_s[c]
            for i in range(n):
                for c in range(bw):
                    ga[i, c] = np.float32(0.0)
            for c in range(bw):
                gD_c[c] = np.float32(0.0)
                gbias_c[c] = np.float32(0.0)
            for r in range(steps):
                s = steps - 1 - r
                t = t0 + s
                br = numba.carray(f32_at(Bm, pb + t * geo[B_, 2]), n)
                cr = numba.carray(f32_at(Cm, pc + t * geo[C_, 2]), n)
                gbr = numba.carray(f32_at(g_Bp, pgb + t * geo[GB, 2]), n)
                gcr = numba.carray(f32_at(g_Cp, pgc + t * geo[GC, 2]), n)
                dt, du, us_s, go = dts[s], dus[s], us[s], gos[s]
                if has_z:
                    gate = gates[s]
                    for c in range(bw):
                        gy[c] = go[c] * gate[c]  # gradient of the pre-gate output
                else:
                    for c in range(bw):
                        gy[c] = go[c]
                for i in range(n):
                    bv, cv = br[i], cr[i]
                    ghi, h1 = gh[i], hs[s + 1, i]
                    sum_c = np.float32(0.0)
                    sum_b = np.float32(0.0)
                    ai, di, h0, gai = a[i], dec[s, i], hs[s, i], ga[i]
                    for c in range(bw):
                        g = ghi[c] + gy[c] * cv  # adjoint of h_t
                        sum_c += gy[c] * h1[c]
                        gdu[c] += g * bv
                        sum_b += g * du[c]
                        g = g * di[c]  # -> adjoint of h_{t-1}; d/d(dt a) = g h_{t-1}
                        q = g * h0[c]
                        gda[c] += q * ai[c]
                        gai[c] += q * dt[c]
                        ghi[c] = g
                    gcr[i] = sum_c
                    gbr[i] = sum_b
                slope = slopes[s]
                for c in range(bw):
                    gdel = (gda[c] + gdu[c] * us_s[c]) * slope[c]
                    gdel_r[c] = gdel
                    gbias_c[c] += gdel
                    gu_r[c] = gdu[c] * dt[c]
                    gdu[c] = np.float32(0.0)  # for the next step, in the stores its loads will read
                    gda[c] = np.float32(0.0)
                if has_d:
                    for c in range(bw):
                        gu_r[c] += gy[c] * d_r[c]
                        gD_c[c] += gy[c] * us_s[c]
                gur = numba.carray(f32_at(g_u, pgu + t * geo[GU, 2]), w)
                gdr = numba.carray(f32_at(g_delta, pgd + t * geo[GDELTA, 2]), w)
                for c in range(w):
                    gur[c] = gu_r[c]
                    gdr[c] = gdel_r[c]
                if has_z:
                    sig, yp, zz = sigs[s], ypre[s], zs[s]
                    for c in range(bw):
                        sg = sig[c]
                        gz_r[c] = go[c] * yp[c] * sg * (np.float32(1.0) + zz[c] * (np.float32(1.0) - sg))
                    gzr = numba.carray(f32_at(g_z, pgz + t * geo[GZ, 2]), w)
                    for c in range(w):
                        gzr[c] = gz_r[c]
            for i in range(n):
                for c in range(w):
                    ga64[i, c] += ga[i, c]
            for c in range(w):
                gD64[c] += gD_c[c]
                gbias64[c] += gbias_c[c]
        for i in range(n):
            for c in range(w):
                g_A[batch, i, c0 + c] = ga64[i, c]
        for c in range(w):
            g_D[batch, c0 + c] = gD64[c]
            g_bias[batch, c0 + c] = gbias64[c]

    # the entries call their kernel by the global name ``kernel`` (see task_entry); they close over ints only
    def forward_entry(row):
        """:func:`forward_part` on a row of :func:`~.numba_runtime.task_table`."""
        if key != SOURCE_KEY or npad < 0:  # never: the ints are here for numba's cache index (see _kernels)
            return
        r, f = numba.carray(row, 31), np.float32
        kernel(row_array(r, 0, f), row_array(r, 2, f), row_array(r, 4, f), row_array(r, 6, f),  # noqa: F821
               row_array(r, 8, f), row_array(r, 10, f), row_array(r, 12, f), row_array2(r, 14, np.int64),
               row_array(r, 17, f), row_array(r, 19, f), row_array(r, 21, f), r[23], r[24], r[25], r[26], r[27],
               r[28], r[29] != 0, r[30] != 0)

    def backward_entry(row):
        """:func:`backward_part` on a row of :func:`~.numba_runtime.task_table`."""
        if key != SOURCE_KEY or npad < 0:
            return
        r, f = numba.carray(row, 50), np.float32
        kernel(row_array(r, 0, f), row_array(r, 2, f), row_array(r, 4, f), row_array(r, 6, f),  # noqa: F821
               row_array(r, 8, f), row_array(r, 10, f), row_array(r, 12, f), row_array(r, 14, f),
               row_array(r, 16, f), row_array(r, 18, f), row_array(r, 20, f), row_array(r, 22, f),
               row_array2(r, 24, np.int64), row_array(r, 27, f), row_array(r, 29, f), row_array(r, 31, f),
               row_array3(r, 33, np.float64), row_array2(r, 37, np.float64), row_array2(r, 40, np.float64),
               r[43], r[44], r[45], r[46], r[47], r[48], r[49] != 0)

    return task_entry(forward_entry, forward_part), task_entry(backward_entry, backward_part)


def _part_tasks(b: int, d: int, groups: int, width: int) -> List[Tuple[int, int, int, int]]:
    """(batch, first channel, count, group) for every part of every group; no part crosses a group."""
    per_group = d // groups
    return [(i, g * per_group + c0, w, g) for i in range(b) for g in range(groups) for c0, w in parts(per_group, width)]


def _states_padded(n: int) -> int:
    return -(-n // STATE_MULTIPLE) * STATE_MULTIPLE


class _SelectiveScanTokens(torch.autograd.Function):
    """u, delta, z: (b, l, d) and B, C: (b, l, g, n), float32 with unit channel stride; y: (b, l, d)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        b, seqlen, d = u.shape
        groups, n = B.shape[2], B.shape[3]
        # what the kernels read of the parameters: A as a row of channels per state (n, d), fp32 bias and D
        A_t = A.detach().float().t().contiguous()
        bias = u.new_zeros(d) if delta_bias is None else delta_bias.detach().float().contiguous()
        D32 = None if D is None else D.detach().float().contiguous()
        save = any(ctx.needs_input_grad)
        hc = u.new_empty(b, math.ceil(seqlen / CHECKPOINT_STEPS), n, d) if save else None
        y = u.new_empty(b, seqlen, d)
        arrays = (flat(u), flat(delta), flat(z), flat(B), flat(C), flat(y), flat(hc),
                  geometry([u, delta, z, B, C, y], seqlen, reverse), flat(A_t), flat(bias), flat(D32))
        forward_entry, _ = _kernels(_states_padded(n))
        run_tasks([(*arrays, i, c0, w, g, n, seqlen, delta_softplus, save)
                   for i, c0, w, g in _part_tasks(b, d, groups, FORWARD_WIDTH)], forward_entry)
        if save:
            ctx.save_for_backward(u, delta, B, C, z, hc, A_t, bias, D32)
            ctx.options = (delta_softplus, reverse, A.dtype, None if D is None else D.dtype,
                           None if delta_bias is None else delta_bias.dtype)
        return y

    @staticmethod
    def backward(ctx, gout):
        u, delta, B, C, z, hc, A_t, bias, D32 = ctx.saved_tensors
        delta_softplus, reverse, A_dtype, D_dtype, bias_dtype = ctx.options
        b, seqlen, d = u.shape
        groups, n = B.shape[2], B.shape[3]
        gout = channels_contiguous(gout)
        tasks = _part_tasks(b, d, groups, BACKWARD_WIDTH)
        per_batch = len(tasks) // b
        g_u, g_delta = u.new_empty(b, seqlen, d), u.new_empty(b, seqlen, d)
        g_z = None if z is None else u.new_empty(b, seqlen, d)
        g_Bp = u.new_empty(per_batch, b, seqlen, n)  # one slice per part: its sum over its channels
        g_Cp = u.new_empty(per_batch, b, seqlen, n)
        g_A = torch.empty(b, n, d, dtype=torch.float64)
        g_D, g_bias = torch.empty(b, d, dtype=torch.float64), torch.empty(b, d, dtype=torch.float64)
        # a part's B and C rows: one per step, whatever the part's group (a group dim of stride 0)
        part_rows = g_Bp[0].unsqueeze(2).expand(-1, -1, groups, -1)
        geo = geometry([u, delta, z, B, C, None, gout, g_u, g_delta, g_z, part_rows, part_rows], seqlen, reverse)
        common = (flat(u), flat(delta), flat(z), flat(B), flat(C), flat(gout), flat(hc), flat(g_u), flat(g_delta),
                  flat(g_z))
        tail = (geo, flat(A_t), flat(bias), flat(D32), g_A.numpy(), g_D.numpy(), g_bias.numpy())
        _, backward_entry = _kernels(_states_padded(n))
        run_tasks([(*common, flat(g_Bp[k % per_batch]), flat(g_Cp[k % per_batch]), *tail, i, c0, w, g, n, seqlen,
                    delta_softplus) for k, (i, c0, w, g) in enumerate(tasks)], backward_entry)

        g_B, g_C = (_sum_parts(x, tasks[:per_batch], groups) for x in (g_Bp, g_Cp))
        return (g_u, g_delta, g_A.sum(0).t().to(A_dtype), g_B, g_C, None if D_dtype is None else g_D.sum(0).to(D_dtype),
                g_z, None if bias_dtype is None else g_bias.sum(0).to(bias_dtype), None, None)


@numba.njit(nogil=True, error_model='numpy', cache=True)
def _add_parts(partials, part_groups, out):
    """out (b, l, g, n) = each group's parts of partials (P, b, l, n), added in part order."""
    out[:] = 0.0
    for p in range(partials.shape[0]):
        g = part_groups[p]
        for i in range(partials.shape[1]):
            for t in range(partials.shape[2]):
                o, q = out[i, t, g], partials[p, i, t]
                for k in range(partials.shape[3]):
                    o[k] += q[k]


def _sum_parts(partials: torch.Tensor, tasks: List[Tuple[int, int, int, int]], groups: int) -> torch.Tensor:
    """(parts, b, l, n) -> (b, l, g, n): each group's parts added in part order, the same at any thread count."""
    p, b, seqlen, n = partials.shape
    out = partials.new_empty(b, seqlen, groups, n)
    _add_parts(partials.numpy(), np.array([g for _, _, _, g in tasks], np.int64), out.numpy())
    return out


def selective_scan_tokens_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                              delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                              reverse: bool = False) -> torch.Tensor:
    """The numba scan on token-major tensors, as :func:`~.scan_inputs.checked_token_shapes` accepts them (the entry
    point, ``dvmsr_mma.ops.selective_scan_tokens``, checks): u, delta, z (b, l, d); B, C (b, l, n) or
    (b, l, g, n); A (d, n); D, delta_bias (d,). ``reverse``: scan from the last token to the first (the scan of
    the flipped sequence, flipped back). Returns y (b, l, d), contiguous, in u's dtype. fp32 tensors with
    contiguous channels are read in place whatever their other strides; anything else is converted first."""
    u32, delta32, z32 = (None if x is None else channels_contiguous(x) for x in (u, delta, z))
    B4, C4 = (channels_contiguous(x.unsqueeze(2) if x.dim() == 3 else x) for x in (B, C))  # (b, l, g, n)
    y = _SelectiveScanTokens.apply(u32, delta32, A, B4, C4, D, z32, delta_bias, delta_softplus, reverse)
    return y.to(u.dtype)
