"""Depthwise causal conv1d (+ SiLU) for CPU tensors, token-major, compiled at run time by numba.

The mixer's conv input is the first half of xz (b, l, 2d), channels contiguous; this kernel reads it there and
writes (b, l, d) as ``x_proj`` and the scan read it, with the SiLU in the same pass (oneDNN's depthwise conv
wanted a (b, d, l) copy and ran 4x slower than this on DVMSR). ``reverse``: the conv of the flipped sequence,
flipped back (it looks ahead instead of back), by stepping through time backwards.

Tasks are blocks of :data:`BLOCK_STEPS` steps of one batch, every channel of a row at once, with no barrier
between them. The weight and bias gradients are summed per block and the blocks added in order, so the results
do not depend on the thread count. The backward is one pass: each step's gradient before the SiLU is recomputed into
a stack row and spread into the rows of g_x it feeds, so the only (b, l, d) tensor it writes is g_x (a first pass
that wrote that gradient out and a second that read it back took 10-15% longer at the training step's shapes, best
of 40 runs alternating in one process).
"""
import functools
from typing import Optional

import numba
import numpy as np
import torch

from .numba_runtime import (
    MATH_FLAGS,
    SOURCE_KEY,
    bases,
    channels_contiguous,
    exp32,
    f32_at,
    flat,
    geometry,
    prefetch_row,
    row_array,
    row_array2,
    run_tasks,
    stack_f32,
    task_entry,
)

__all__ = ['causal_conv1d_tokens_cpu']

BLOCK_STEPS = 1024  # time steps per task
ROW = 64  # channels per pass over a row (an accumulator row on the stack)
FLUSH = 64  # steps the weight and bias gradients are summed over in fp32 before they go into float64
AHEAD = 16  # steps: input rows are prefetched this far ahead (see numba_runtime.prefetch)


# inlined into each kernel and cached with it (a kernel's closure must not hold a dispatcher: see task_entry)
@numba.njit(fastmath=MATH_FLAGS, error_model='numpy', inline='always')
def _pre_row(x, px, sx, weight, bias, s, c0, w, d, width, acc):
    """acc[:w] = bias + sum_k w_k x_{s - width + 1 + k}, channels c0..c0+w (the pre-activation of step s)."""
    if bias.shape[0] > 0:
        br = numba.carray(f32_at(bias, c0), w)
        for c in range(w):
            acc[c] = br[c]
    else:
        for c in range(w):
            acc[c] = np.float32(0.0)
    for k in range(width):
        sp = s - width + 1 + k
        if sp >= 0:
            xr = numba.carray(f32_at(x, px + sp * sx + c0), w)
            wr = numba.carray(f32_at(weight, k * d + c0), w)
            for c in range(w):
                acc[c] += wr[c] * xr[c]


@functools.lru_cache(maxsize=None)
def _kernels():
    """The task entries of the forward and backward block kernels, compiled once (cached on disk)."""
    key = SOURCE_KEY  # a closure variable, so numba's disk cache follows numba_runtime.py (see there)
    row, flush, ahead = ROW, FLUSH, AHEAD

    @numba.njit(nogil=True, fastmath=MATH_FLAGS, error_model='numpy', cache=True)
    def forward_block(x, y, weight, bias, geo, batch, s0, s1, seqlen, d, width, silu):
        """Steps s0..s1 of one batch in scan order: y = silu(pre) (or pre)."""
        assert key == SOURCE_KEY
        acc = numba.carray(stack_f32(row), row)
        p = bases(geo, batch, 0, 0)
        px, py, sx = p[0], p[1], geo[0, 2]
        for s in range(s0, s1):
            if s + ahead < seqlen:
                prefetch_row(x, px + (s + ahead) * sx, d)
            for c0 in range(0, d, row):
                w = min(row, d - c0)
                _pre_row(x, px, sx, weight, bias, s, c0, w, d, width, acc)
                yr = numba.carray(f32_at(y, py + s * geo[1, 2] + c0), w)
                if silu:
                    for c in range(w):
                        yr[c] = acc[c] / (np.float32(1.0) + exp32(-acc[c]))
                else:
                    for c in range(w):
                        yr[c] = acc[c]

    @numba.njit(nogil=True, fastmath=MATH_FLAGS, error_model='numpy', cache=True)
    def backward_block(x, gout, g_x, weight, bias, g_w, g_b, geo, task, batch, s0, s1, seqlen, d, width, silu):
        """Input steps s0..s1 of one batch in one pass over output steps s = s0 .. s1 + width - 2: gpre_s =
        gout_s silu'(pre_s) (pre_s recomputed) goes as w_k gpre_s into g_x of input step s - width + 1 + k where
        that is in the block (so g_x_s = sum_k w_k gpre_{s + width - 1 - k}), and for s < s1 into this block's
        sums of gpre_s x_{s - width + 1 + k} (g_w[task], (width, d)) and of gpre_s (g_b[task]), in float64 (fp32
        over runs of FLUSH steps). Nothing is written but g_x, g_w and g_b: gpre lives in one stack row."""
        assert key == SOURCE_KEY
        acc, gr = numba.carray(stack_f32(row), row), numba.carray(stack_f32(row), row)
        gw32 = np.empty((width, row), np.float32)
        gb32 = numba.carray(stack_f32(row), row)
        gw64, gb64 = np.empty((width, row), np.float64), np.empty(row, np.float64)
        p = bases(geo, batch, 0, 0)
        px, pgo, pgx = p[0], p[1], p[2]
        sx, sgo, sgx = geo[0, 2], geo[1, 2], geo[2, 2]
        last = min(seqlen, s1 + width - 1)
        for c0 in range(0, d, row):
            w = min(row, d - c0)
            gw64[:] = 0.0
            gb64[:] = 0.0
            gw32[:] = np.float32(0.0)
            gb32[:] = np.float32(0.0)
            for s in range(s0, last):
                if s + ahead < seqlen:
                    prefetch_row(x, px + (s + ahead) * sx + c0, w)
                    prefetch_row(gout, pgo + (s + ahead) * sgo + c0, w)
                gor = numba.carray(f32_at(gout, pgo + s * sgo + c0), w)
                if silu:
                    _pre_row(x, px, sx, weight, bias, s, c0, w, d, width, acc)
                    for c in range(w):
                        pa = acc[c]
                        sg = np.float32(1.0) / (np.float32(1.0) + exp32(-pa))
                        gr[c] = gor[c] * sg * (np.float32(1.0) + pa * (np.float32(1.0) - sg))
                else:
                    for c in range(w):
                        gr[c] = gor[c]
                for k in range(width - 1, -1, -1):  # input step s first: its row starts here
                    si = s - width + 1 + k
                    if s0 <= si < s1:
                        gxr = numba.carray(f32_at(g_x, pgx + si * sgx + c0), w)
                        wr = numba.carray(f32_at(weight, k * d + c0), w)
                        if si == s:
                            for c in range(w):
                                gxr[c] = wr[c] * gr[c]
                        else:
                            for c in range(w):
                                gxr[c] += wr[c] * gr[c]
                if s >= s1:
                    continue
                for c in range(w):
                    gb32[c] += gr[c]
                for k in range(width):
                    sp = s - width + 1 + k
                    if sp >= 0:
                        xr = numba.carray(f32_at(x, px + sp * sx + c0), w)
                        gwk = gw32[k]
                        for c in range(w):
                            gwk[c] += gr[c] * xr[c]
                if (s - s0) % flush == flush - 1 or s == s1 - 1:
                    for k in range(width):
                        for c in range(w):
                            gw64[k, c] += gw32[k, c]
                            gw32[k, c] = np.float32(0.0)
                    for c in range(w):
                        gb64[c] += gb32[c]
                        gb32[c] = np.float32(0.0)
            for k in range(width):
                for c in range(w):
                    g_w[task, k * d + c0 + c] = gw64[k, c]
            for c in range(w):
                g_b[task, c0 + c] = gb64[c]

    # the entries call their kernel by the global name ``kernel`` (see task_entry); they close over ints only
    def forward_entry(row):
        """:func:`forward_block` on a row of :func:`~.numba_runtime.task_table`."""
        if key != SOURCE_KEY:  # never: the key is here for numba's cache index
            return
        r, f = numba.carray(row, 18), np.float32
        kernel(row_array(r, 0, f), row_array(r, 2, f), row_array(r, 4, f), row_array(r, 6, f),  # noqa: F821
               row_array2(r, 8, np.int64), r[11], r[12], r[13], r[14], r[15], r[16], r[17] != 0)

    def backward_entry(row):
        """:func:`backward_block` on a row of :func:`~.numba_runtime.task_table`."""
        if key != SOURCE_KEY:
            return
        r, f = numba.carray(row, 27), np.float32
        kernel(row_array(r, 0, f), row_array(r, 2, f), row_array(r, 4, f), row_array(r, 6, f),  # noqa: F821
               row_array(r, 8, f), row_array2(r, 10, np.float64), row_array2(r, 13, np.float64),
               row_array2(r, 16, np.int64), r[19], r[20], r[21], r[22], r[23], r[24], r[25], r[26] != 0)

    return task_entry(forward_entry, forward_block), task_entry(backward_entry, backward_block)


def _blocks(b: int, seqlen: int):
    return [(i, s0, min(seqlen, s0 + BLOCK_STEPS)) for i in range(b) for s0 in range(0, seqlen, BLOCK_STEPS)]


class _CausalConv1dTokens(torch.autograd.Function):
    """x: (b, l, d) float32 with unit channel stride; weight (d, width); bias (d,) or None; y: (b, l, d)."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu, reverse):
        b, seqlen, d = x.shape
        w_t = weight.detach().float().t().contiguous()  # (width, d): a row of channels per tap
        bias32 = None if bias is None else bias.detach().float().contiguous()
        y = x.new_empty(b, seqlen, d)
        forward_entry, _ = _kernels()
        arrays = (flat(x), flat(y), flat(w_t), flat(bias32), geometry([x, y], seqlen, reverse))
        run_tasks([(*arrays, i, s0, s1, seqlen, d, w_t.shape[0], silu) for i, s0, s1 in _blocks(b, seqlen)],
                  forward_entry)
        ctx.save_for_backward(x, w_t, bias32)
        ctx.options = (silu, reverse, weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, gout):
        x, w_t, bias32 = ctx.saved_tensors
        silu, reverse, weight_dtype, bias_dtype = ctx.options
        b, seqlen, d = x.shape
        width = w_t.shape[0]
        gout = channels_contiguous(gout)
        g_x = x.new_empty(b, seqlen, d)
        blocks = _blocks(b, seqlen)
        g_w = np.empty((len(blocks), width * d), np.float64)
        g_b = np.empty((len(blocks), d), np.float64)
        arrays = (flat(x), flat(gout), flat(g_x), flat(w_t), flat(bias32), g_w, g_b,
                  geometry([x, gout, g_x], seqlen, reverse))
        _, backward_entry = _kernels()
        run_tasks([(*arrays, k, i, s0, s1, seqlen, d, width, silu) for k, (i, s0, s1) in enumerate(blocks)],
                  backward_entry)
        # block sums added in block order (numpy adds along the first axis row by row)
        g_weight = torch.from_numpy(g_w.sum(0).reshape(width, d)).t().to(weight_dtype)
        g_bias = None if bias_dtype is None else torch.from_numpy(g_b.sum(0)).to(bias_dtype)
        return g_x, g_weight, g_bias, None, None


def causal_conv1d_tokens_cpu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                             activation: Optional[str] = None, reverse: bool = False) -> torch.Tensor:
    """The numba conv on token-major x (b, l, d): weight (d, width), bias (d,), activation None, 'silu' or
    'swish'. ``reverse``: the conv of the flipped sequence, flipped back. Returns (b, l, d), contiguous, in x's
    dtype; fp32 x with contiguous channels is read in place, anything else converted first."""
    y = _CausalConv1dTokens.apply(channels_contiguous(x), weight, bias, activation is not None, reverse)
    return y.to(x.dtype)

