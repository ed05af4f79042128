"""What the numba CPU kernels share: compiler flags, a vectorizable exp, raw row access, and the threads.

The kernels (:mod:`.scan_cpu`, :mod:`.conv_cpu`) work on token-major tensors ((b, l, channels), channels
contiguous) and are cut into tasks that ``torch.get_num_threads()`` threads take one at a time (:func:`run_tasks`:
torch's own OpenMP team where torch runs on GNU OpenMP, else Python threads, numba releasing the GIL), so a thread
the OS deschedules only takes fewer tasks. How the work is cut depends on the shapes only, never on the thread
count, so results do not either.
"""
import ctypes
import itertools
import os
import threading
import types as pytypes
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import numba
import numpy as np
import torch
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.ccallback import CFunc
from numba.extending import intrinsic

from . import allocator

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
def prefetch(typingctx, array, offset, write):
    """Ask the CPU to bring element ``offset`` of a 1-D float32 array into cache (``llvm.prefetch``, kept close; for
    writing where ``write``, a literal, is true); no effect on results. The kernels fetch rows a few steps ahead: a
    reverse scan walks memory downwards, which hardware prefetchers follow badly (a reversed pass over MMA-T's rows
    ran 4x slower without it), and the backward writes its gradient rows that way (a fifth of its time went to
    waiting for those lines)."""
    if not (isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1
            and isinstance(write, types.BooleanLiteral)):
        return None
    rw = int(write.literal_value)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32])
        fn = builder.module.declare_intrinsic('llvm.prefetch', [pointer.type], fnty)  # mangled for the pointer type
        builder.call(fn, [pointer, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, offset, write), codegen


@numba.njit(inline='always')
def prefetch_row(array, offset, count):
    """:func:`prefetch` for ``count`` floats from ``offset``: one hint per 64-byte line. Inlined where it is
    called (no float math in it, so no flags to keep apart): a call would spill the caller's vector registers."""
    for k in range(0, count, 16):
        prefetch(array, offset + k, False)


@numba.njit(inline='always')
def prefetch_row_for_write(array, offset, count):
    """:func:`prefetch_row` for a row about to be written."""
    for k in range(0, count, 16):
        prefetch(array, offset + k, True)


# Where the kernels are compiled for this machine and it has AVX-512, 2^k is applied by vscalefps (llvm.ldexp):
# one instruction for the five that build two exponent fields (13% off the exp); elsewhere llvm.ldexp would be a
# library call per element. The two forms give the same bits (scaling by a power of two rounds once either way).


def _compiled_for_avx512() -> bool:
    if numba.config.CPU_NAME not in (None, 'host'):  # compiled for another CPU (a portable cache)
        return False
    features = numba.config.CPU_FEATURES or llvm_binding.get_host_cpu_features().flatten()
    return '+avx512f' in features.split(',')


SCALEF = _compiled_for_avx512()
# Cephes' expf: ln 2 in two parts (Cody-Waite), then the polynomial for e^r
LN2_HI, LN2_LO, LOG2E = 0.693359375, -2.12194440e-4, 1.44269504088896341
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@intrinsic
def exp32(typingctx, x):
    """float32 exp, emitted inline as LLVM IR wherever it is called: x = k ln2 + r with |r| <= ln2 / 2, e^r by
    Cephes' expf polynomial (about 1 ulp, as torch's), then e^r 2^k: one ``vscalefps`` where :data:`SCALEF`, else
    two exponent-field factors, so results down to the denormals and up to inf come out right (the same bits both
    ways); clamping to [-104, 89] changes no float32 result; NaN propagates.

    Why an intrinsic: as an njit function, LLVM left it out of line in the large backward kernel, one scalar call
    per element (40% of the backward's time). Inline IR always vectorizes with the loop around it, and carries its
    own fast-math flags (multiply-adds fused, never reassociated: the Cody-Waite reduction and the two 2^k factors
    must keep their order), whatever flags the calling kernel has."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        f32, i32 = ir.FloatType(), ir.IntType(32)
        flags = ('contract', 'nsz', 'arcp')

        def const(value):
            return ir.Constant(f32, float(np.float32(value)))

        def mul_add(a, b, c):  # a * b + c, fused where the target has FMA
            return builder.fadd(builder.fmul(a, b, flags=flags), c, flags=flags)

        x = args[0]
        low, high = const(-104.0), const(89.0)
        # NaN fails both tests and goes through: the polynomial of NaN is NaN whatever k comes out as
        xc = builder.select(builder.fcmp_ordered('<', x, low), low, x)
        xc = builder.select(builder.fcmp_ordered('>', xc, high), high, xc)
        floor = builder.module.declare_intrinsic('llvm.floor', [f32])
        k = builder.call(floor, [mul_add(xc, const(LOG2E), const(0.5))])  # float: an int64 floor is scalar on AVX2
        r = builder.fsub(builder.fsub(xc, builder.fmul(k, const(LN2_HI), flags=flags), flags=flags),
                         builder.fmul(k, const(LN2_LO), flags=flags), flags=flags)
        p = const(EXP_POLY[0])
        for coefficient in EXP_POLY[1:]:
            p = mul_add(p, r, const(coefficient))
        e = builder.fadd(mul_add(builder.fmul(p, r, flags=flags), r, r), const(1.0), flags=flags)
        ki = builder.fptosi(k, i32)
        if SCALEF:  # e 2^k in one instruction (vscalefps), denormals and overflow included
            ldexp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, i32]),
                                                   'llvm.ldexp.f32.i32')
            return builder.call(ldexp, [e, ki])
        k1 = builder.ashr(ki, ir.Constant(i32, 1))
        k2 = builder.sub(ki, k1)

        def power_of_two(exponent):
            return builder.bitcast(builder.shl(builder.add(exponent, ir.Constant(i32, 127)), ir.Constant(i32, 23)), f32)

        return builder.fmul(builder.fmul(e, power_of_two(k1), flags=flags), power_of_two(k2), flags=flags)

    return types.float32(types.float32), codegen


@intrinsic
def mul_add32(typingctx, a, b, c):
    """a b + c in float32 as one multiply-add where the target has FMA (``llvm.fmuladd``). The scan kernels run
    without 'contract' (see :data:`FLAGS`), so their state updates h = exp(dt A) h + dt u B and sums acc += h C
    were a multiply and an add each: fused, the forward issues two vector instructions fewer per 16 state updates
    (21 instead of 23 in its inner loop's machine code on AVX-512)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), 'llvm.fmuladd.f32')
        return builder.call(fmuladd, list(args))

    return types.float32(types.float32, types.float32, types.float32), codegen


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


@intrinsic
def address_as_pointer(typingctx, address, dtype):
    """The int64 ``address`` as a pointer to ``dtype`` (np.float32, np.float64 or np.int64), for ``numba.carray``:
    a task entry's arrays come as addresses in its row of int64 (see :func:`task_table`)."""
    if not (isinstance(address, types.Integer) and isinstance(dtype, types.NumberClass)):
        return None
    pointer = types.CPointer(dtype.instance_type)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, dtype), codegen


@numba.njit(inline='always')
def row_array(row, at, dtype):
    """The 1-D array whose address and length are ``row[at]``, ``row[at + 1]``."""
    return numba.carray(address_as_pointer(row[at], dtype), row[at + 1])


@numba.njit(inline='always')
def row_array2(row, at, dtype):
    """The 2-D array whose address and shape are ``row[at]``, ``row[at + 1]``, ``row[at + 2]``."""
    return numba.carray(address_as_pointer(row[at], dtype), (row[at + 1], row[at + 2]))


@numba.njit(inline='always')
def row_array3(row, at, dtype):
    """The 3-D array whose address and shape are ``row[at]`` to ``row[at + 3]``."""
    return numba.carray(address_as_pointer(row[at], dtype), (row[at + 1], row[at + 2], row[at + 3]))


# A task entry: ``void entry(int64 *row)``, the kernel called with its arguments decoded from the task's row.
TASK_ENTRY = types.void(types.CPointer(types.int64))


def task_entry(entry, kernel):
    """``entry`` (a function of a task's row that calls the global name ``kernel``) as a cached cfunc calling
    ``kernel``. The kernel goes into the entry's globals, not its closure: numba's cache index hashes closure
    variables, and a dispatcher hashes differently in every process, so an entry closing over its kernel was
    compiled again in every process (4 s at the first call)."""
    function = pytypes.FunctionType(entry.__code__, {**entry.__globals__, 'kernel': kernel}, entry.__name__,
                                    entry.__defaults__, entry.__closure__)
    function.__qualname__ = entry.__qualname__
    return numba.cfunc(TASK_ENTRY, cache=True)(function)


@intrinsic
def _take_next(typingctx, header):
    """header[3] += 1, atomically; returns the value before (the next task to run)."""
    if not isinstance(header, types.CPointer):
        return None

    def codegen(context, builder, signature, args):
        counter = builder.gep(args[0], [ir.Constant(ir.IntType(64), 3)])
        return builder.atomic_rmw('add', counter, ir.Constant(ir.IntType(64), 1), 'monotonic')

    return types.int64(header), codegen


@intrinsic
def _call_entry(typingctx, entry, row):
    """Call the task entry at address ``entry`` on ``row``."""
    if not (isinstance(entry, types.Integer) and isinstance(row, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        i64p = ir.IntType(64).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i64p])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [builder.inttoptr(args[1], i64p)])
        return context.get_dummy_value()

    return types.void(entry, row), codegen


@numba.cfunc(TASK_ENTRY, cache=True)
def _team_member(header):
    """What every thread of the OpenMP team runs: take the next task until none is left. ``header``: the entry's
    address, the task count, the row width, the shared counter, the table's address."""
    entry, count, width, table = header[0], header[1], header[2], header[4]
    while True:
        k = _take_next(header)
        if k >= count:
            return
        _call_entry(entry, table + 8 * k * width)


def task_table(tasks: List[tuple]) -> np.ndarray:
    """The tasks as rows of int64 for a task entry: an array as its address and shape (C-contiguous), a bool or an
    int as its value. The arrays must outlive the run (the tasks hold them)."""
    rows = []
    for task in tasks:
        row = []
        for value in task:
            if isinstance(value, np.ndarray):
                assert value.flags.c_contiguous, 'a task array must be C-contiguous'
                row += [value.ctypes.data, *value.shape]
            else:
                row.append(int(value))
        rows.append(row)
    return np.array(rows, np.int64)


def _torch_openmp():
    """``GOMP_parallel`` of the OpenMP runtime that runs torch's intra-op threads (Linux wheels ship it as
    torch/lib/libgomp.so.1), or None where torch does not use GNU OpenMP's interface."""
    if 'OpenMP' not in torch.__config__.parallel_info():
        return None
    bundled = os.path.join(os.path.dirname(torch.__file__), 'lib', 'libgomp.so.1')
    try:  # already loaded by torch: dlopen returns that copy (by path, or by its soname)
        run = ctypes.CDLL(bundled if os.path.exists(bundled) else 'libgomp.so.1').GOMP_parallel
    except (OSError, AttributeError):
        return None
    run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    run.restype = None
    return run


def _throttle_spinning(run) -> None:
    """Put torch's OpenMP runtime under GNU OpenMP's documented rule for an oversubscribed machine: where it manages
    more threads than there are CPUs, a thread that waits at a barrier spins 100 times before it sleeps, instead of
    GOMP_SPINCOUNT times (300,000 by default, milliseconds). A daemon thread starts a team of two (its task list is
    empty) and then waits for ever, so libgomp manages one idle thread more than torch's team; where that team has a
    thread per CPU (torch's default), the rule then holds whatever the program imported first. On a busy machine a
    spinning thread takes the time slice a descheduled peer needs: DVMSR ran 2.6-3.8x its quiet time beside two busy
    loops in programs that imported torch first, and about 2x with the rule (docs/kernels.md). A user's
    ``OMP_WAIT_POLICY`` keeps libgomp's own choice."""
    if 'OMP_WAIT_POLICY' in os.environ:
        return
    started = threading.Event()

    def hold():
        header = np.zeros(5, np.int64)  # no tasks: both members return at once
        run(_team_member.address, header.ctypes.data, 2, 0)
        started.set()
        threading.Event().wait()  # the thread's idle OpenMP worker lives as long as this thread

    threading.Thread(target=hold, name='dvmsr_mma_openmp_idle', daemon=True).start()
    started.wait()


_ENTRY_CALL = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # a task entry called from Python (the GIL released)
_openmp_run = None
_set_up = False  # run_tasks' first kernel call has set the process up
_pool: Optional[ThreadPoolExecutor] = None
_pool_key: Tuple[int, int] = (0, 0)
_pool_lock = threading.Lock()


def run_tasks(tasks: List[tuple], work) -> None:
    """Run ``work`` on every task on ``torch.get_num_threads()`` threads, the caller one of them (inline for one
    thread). Each thread takes the next task from a shared counter until none is left: no task waits for a thread
    the OS has descheduled, and the caller hands nothing out per task.

    ``work`` is a kernel's task entry (:func:`task_entry`, called on the task's row of :func:`task_table`) or a
    Python callable (called as ``work(*task)``). An entry runs every task at any thread count, so one compiled copy
    of the kernel computes every result (a copy loaded from numba's cache need not round as another copy does).
    Where torch runs on GNU OpenMP, an entry's threads are torch's own OpenMP team: the kernels and torch's ops take
    turns on the same threads, where two pools would each leave threads spinning on the cores the other needs (a
    program that imported torch first, with libgomp's default spin, ran DVMSR 2-3x slower). Otherwise a pool of
    Python threads runs the tasks (numba and ctypes release the GIL)."""
    if not tasks:  # an empty batch
        return
    threads = min(torch.get_num_threads(), len(tasks))
    if isinstance(work, CFunc):
        table = task_table(tasks)
        global _openmp_run, _set_up
        if not _set_up:  # the first kernel call: set the process up for the kernels
            allocator.keep_freed_memory()  # first: it refuses a bad DVMSR_MMA_MALLOC before anything else is done
            _openmp_run, _set_up = _torch_openmp(), True
            if _openmp_run is not None:
                _throttle_spinning(_openmp_run)
        if threads > 1 and _openmp_run is not None:
            header = np.array([work.address, len(tasks), table.shape[1], 0, table.ctypes.data], np.int64)
            _openmp_run(_team_member.address, header.ctypes.data, threads, 0)
            return
        call, width = _ENTRY_CALL(work.address), 8 * table.shape[1]
        # the rows' addresses; ``tasks`` stays referenced here, and with it every array the rows point into
        fn, items = call, [(table.ctypes.data + k * width, ) for k in range(len(tasks))]
    else:
        fn, items = work, tasks
    if threads <= 1:
        for item in items:
            fn(*item)
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

    def take_tasks():
        while True:
            i = next(counter)
            if i >= len(items):
                return
            fn(*items[i])

    helpers = [pool.submit(take_tasks) for _ in range(threads - 1)]
    try:
        take_tasks()
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
