"""What the numba CPU kernels share: compiler flags, a vectorizable exp, and the thread pool that runs their tasks.

The kernels (:mod:`.scan_cpu`) work lane by lane ((batch, channel) rows); lanes are grouped into
tasks that a pool of ``torch.get_num_threads()`` Python threads takes one at a time (numba releases the GIL), so
there is no barrier per operation and a thread the OS deschedules only takes fewer tasks.
"""
import math
import os
import threading
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
EMPTY1, EMPTY3 = np.empty(0, np.float32), np.empty((0, 0, 0), np.float32)


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


@numba.njit(fastmath=MATH_FLAGS, error_model='numpy', cache=True)
def exp32(x):
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
            if _pool is not None and _pool_key[0] == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads, thread_name_prefix='dvmsr_mma_scan')
            _pool_key = key
        pool = _pool
    for future in [pool.submit(fn, *task) for task in tasks]:
        future.result()


def lane_tasks(b: int, d: int, max_parts: Optional[int] = None) -> List[Tuple[int, int, int, int]]:
    """(batch, first channel, end channel, part) covering every lane, about TASKS_PER_THREAD per thread, each batch
    cut into the same ``parts`` (at most ``max_parts``): a task is a fixed set of lanes, so results do not depend
    on which thread runs it."""
    parts = max(1, min(d, math.ceil(TASKS_PER_THREAD * torch.get_num_threads() / b), max_parts or d))
    bounds = [round(i * d / parts) for i in range(parts + 1)]
    return [(i, bounds[p], bounds[p + 1], p) for i in range(b) for p in range(parts)]


def arr(x: Optional[torch.Tensor], empty: Optional[np.ndarray] = None) -> np.ndarray:
    """The array numba sees (sharing memory with ``x``); ``empty`` stands for an absent optional input."""
    return empty if x is None else x.detach().numpy()


def f32(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A detached, contiguous float32 copy of ``x`` (``x`` itself when it already is one)."""
    return None if x is None else x.detach().float().contiguous()
