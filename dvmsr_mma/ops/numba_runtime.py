"""What the numba CPU kernels share: compiler flags, a vectorizable exp, raw row access, and the thread pool.

The kernels (:mod:`.scan_cpu`, :mod:`.conv_cpu`) work on token-major tensors ((b, l, channels), channels
contiguous) and are cut into tasks that a pool of ``torch.get_num_threads()`` Python threads takes one at a time
(numba releases the GIL), so there is no barrier per operation and a thread the OS deschedules only takes fewer
tasks. How the work is cut depends on the shapes only, never on the thread count, so results do not either.
"""
import itertools
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

TASKS_PER_THREAD = 8  # lanes are cut into about this many tasks per thread, for balance on a busy machine

# No 'nnan'/'ninf': NaN and inf propagate as in torch. error_model='numpy': no zero-division check per element,
# which would keep loops from vectorizing. The elementwise math fuses multiply-adds ('contract'); the kernels do
# not, since contracted products keep the compiler from vectorizing the sums over the states (4x slower there).
# The elementwise math keeps its order (no 'reassoc': 2^k is built from two factors that must not be multiplied
# first); it is in separate functions, so each keeps its own flags when the compiler inlines it.
FLAGS = {'reassoc', 'nsz', 'arcp'}
MATH_FLAGS = {'contract', 'nsz', 'arcp'}
EMPTY1 = np.empty(0, np.float32)

# numba's disk cache checks the source file of a cached function, not of the helpers compiled into it: a kernel
# whose only change is here would load stale code. Kernels are closures over this key, which numba's cache index
# includes (it hashes closure variables), so a change to this file recompiles them.
with open(__file__, 'rb') as _source:
    SOURCE_KEY = zlib.crc32(_source.read())


@intrinsic
def int_bits_as_float(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (builds 2^k from its exponent field)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def stack_f32(typingctx, size):
    """A pointer to ``size`` (a compile-time constant) float32 on the stack, for ``numba.carray``: the compiler
    knows stack memory aliases no argument, so loops that store into it vectorize (2x on the scan's backward;
    with heap scratch it must assume any store may change any array it reads)."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, ir.FloatType(), size=count)

    return types.CPointer(types.float32)(size), codegen


@intrinsic
def f32_at(typingctx, array, offset):
    """A pointer to element ``offset`` of a 1-D float32 array, for ``numba.carray`` row views: a row indexed
    from 0 by a ``range`` needs no negative-index wrap, and a negative time stride (a reverse scan) is only
    arithmetic on ``offset``."""
    if not (isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.gep(data, [args[1]])

    return types.CPointer(types.float32)(array, offset), codegen


@intrinsic
def prefetch(typingctx, array, offset):
    """Ask the CPU to bring element ``offset`` of a 1-D float32 array into cache (``llvm.prefetch``: a read, kept
    close); no effect on results. The kernels fetch rows a few steps ahead: a reverse scan walks memory downwards,
    which hardware prefetchers follow badly (a reversed pass over MMA-T's rows ran 4x slower without it)."""
    if not (isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32])
        fn = builder.module.declare_intrinsic('llvm.prefetch', [pointer.type], fnty)  # mangled for the pointer type
        builder.call(fn, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, offset), codegen


@numba.njit(cache=True)
def prefetch_row(array, offset, count):
    """:func:`prefetch` for ``count`` floats from ``offset``: one hint per 64-byte line."""
    for k in range(0, count, 16):
        prefetch(array, offset + k)


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy', cache=True)
def exp32(x):
    """float32 exp in a form the compiler vectorizes: x = k ln2 + r with |r| <= ln2 / 2, e^r by Cephes' expf
    polynomial (about 1 ulp, as torch's), 2^k as two exponent-field factors so results down to the denormals
    and up to inf come out right; clamping to [-104, 89] changes no float32 result; NaN propagates."""
    xc = min(max(x, np.float32(-104.0)), np.float32(89.0))
    k = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))  # float: math.floor's int64 is scalar on AVX2
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
    s1 = int_bits_as_float((k1 + np.int32(127)) << np.int32(23))
    s2 = int_bits_as_float((k2 + np.int32(127)) << np.int32(23))
    return e * s1 * s2 + (x - x)


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy', cache=True)
def log1p_small(y):
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


_pool: Optional[ThreadPoolExecutor] = None
_pool_key: Tuple[int, int] = (0, 0)
_pool_lock = threading.Lock()


def run_tasks(tasks: List[tuple], fn) -> None:
    """Run ``fn(*task)`` for every task on ``torch.get_num_threads()`` threads, the caller one of them (inline for
    one thread). Each thread takes the next task from a shared counter until none is left: no task waits for a
    thread the OS has descheduled, and the caller hands nothing out per task."""
    threads = min(torch.get_num_threads(), len(tasks))
    if threads <= 1:
        for task in tasks:
            fn(*task)
        return
    global _pool, _pool_key
    with _pool_lock:
        key = (os.getpid(), threads - 1)  # a forked child has the object but not the threads
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads - 1, thread_name_prefix='dvmsr_mma_scan')
            _pool_key = key
        pool = _pool
    counter = itertools.count()  # next() is atomic under the GIL

    def work():
        while True:
            i = next(counter)
            if i >= len(tasks):
                return
            fn(*tasks[i])

    helpers = [pool.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:  # the helpers finish (and raise what they raised) before the buffers go back to the caller
        for helper in helpers:
            helper.result()


def flat(x: Optional[torch.Tensor]) -> np.ndarray:
    """The 1-D float32 array numba reads ``x`` (fp32, last stride 1) through, from ``x``'s first element to its
    last (no copy); an empty array for an absent optional input."""
    if x is None:
        return EMPTY1
    span = 1 + sum((size - 1) * stride for size, stride in zip(x.shape, x.stride())) if x.numel() else 0
    return x.detach().as_strided((span, ), (1, ), x.storage_offset()).numpy()


def geometry(tensors: List[Optional[torch.Tensor]], seqlen: int, reverse: bool) -> np.ndarray:
    """How the kernels walk each (b, l, ...) tensor, one row each: the offset of scan step 0, the batch stride, the
    step stride (negative for a reverse scan, which starts at the last time step), the group stride and the channel
    stride. A (b, l, d) tensor is indexed by channel (stride 1); a (b, l, g, n) one (B, C) by group, its channels
    sharing a row. :func:`bases` turns a row into a task's start offset."""
    rows = []
    for x in tensors:
        if x is None:
            rows.append((0, 0, 0, 0, 0))
            continue
        step = x.stride(1)
        grouped = x.dim() == 4
        rows.append(((seqlen - 1) * step if reverse else 0, x.stride(0), -step if reverse else step,
                     x.stride(2) if grouped else 0, 0 if grouped else 1))
    return np.array(rows, np.int64)


@numba.njit(error_model='numpy', cache=True)
def bases(geo, batch, c0, group):
    """Per tensor of :func:`geometry`: the offset of scan step 0 of the task at (batch, first channel, group)."""
    return geo[:, 0] + batch * geo[:, 1] + group * geo[:, 3] + c0 * geo[:, 4]


def channels_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the kernels read it: float32 with contiguous channels (the last dim), other strides as they are.
    A copy only for other dtypes or layouts."""
    x = x.float()
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


ALIGN = 16  # channels: parts start on 64-byte cache lines, so two threads never write one line


def parts(d: int, width: int) -> List[Tuple[int, int]]:
    """``d`` channels cut into the fewest parts of at most ``width`` (a multiple of ALIGN), as even as whole cache
    lines allow: (first, count) each."""
    count, lines = -(-d // width), -(-d // ALIGN)
    sizes = [lines // count + (i < lines % count) for i in range(count)]
    starts = [ALIGN * sum(sizes[:i]) for i in range(count + 1)]
    return [(starts[i], min(d, starts[i + 1]) - starts[i]) for i in range(count) if starts[i] < d]
