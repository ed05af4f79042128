"""glibc's malloc, set at the first CPU kernel call to reuse freed memory for large tensors instead of fresh pages.

glibc serves an allocation above its mmap threshold (128 KiB, rising to at most 32 MiB as such blocks are freed)
with a new mapping, and hands memory at the top of its heap back to the OS past its trim threshold. The networks'
activations on CPU are tensors of 10-250 MB, allocated and freed several times per block, so a pass faulted in
fresh pages, each fault mapping and zeroing 4 KiB (about 1 ms per 4 MB here): a DVMSR x4 256x256 forward faulted
45-680 MB, run to run. With both thresholds at 1 GiB, freed blocks are reused and a pass faults none: median times
6-8% lower for MMA-T x2 128x128 and 3-23% for the DVMSR x4 training step, DVMSR x4 256x256 within noise
(docs/kernels.md). The cost: memory a pass freed stays with the process for the next one (its resident size stays
near its peak), as in torch's CUDA caching allocator.

A user's own choice is kept: ``MALLOC_*_`` or ``glibc.malloc`` tunables in the environment, another allocator in
``LD_PRELOAD`` (jemalloc, tcmalloc, mimalloc), or ``DVMSR_MMA_MALLOC=system`` (``auto``, the default, sets them).
"""
import ctypes
import os
import sys

from dvmsr_mma.utils.errors import OptionError

__all__ = ['ENV_MALLOC', 'THRESHOLD', 'keep_freed_memory', 'users_choice']

ENV_MALLOC = 'DVMSR_MMA_MALLOC'  # 'auto' (unset): the thresholds below; 'system': glibc's own
THRESHOLD = 1 << 30  # bytes, for both thresholds
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_OTHER_ALLOCATORS = ('jemalloc', 'tcmalloc', 'mimalloc')


def users_choice() -> bool:
    """Whether the environment already says how malloc should behave; a :data:`ENV_MALLOC` other than auto or
    system is refused in one line."""
    env = os.environ
    setting = env.get(ENV_MALLOC, '').strip().lower() or 'auto'
    if setting not in ('auto', 'system'):
        raise OptionError(f'{ENV_MALLOC}={env[ENV_MALLOC]}: use auto (the default) or system')
    return (setting == 'system' or any(k.startswith('MALLOC_') for k in env)
            or 'glibc.malloc' in env.get('GLIBC_TUNABLES', '')
            or any(name in env.get('LD_PRELOAD', '') for name in _OTHER_ALLOCATORS))


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`THRESHOLD` unless the user chose otherwise (see the module
    docstring); returns whether they were set. No effect off glibc."""
    if not sys.platform.startswith('linux') or not _glibc() or users_choice():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD))


def _glibc() -> bool:
    """Whether this process runs on glibc (``confstr``, no file read, unlike ``platform.libc_ver``)."""
    try:
        return (os.confstr('CS_GNU_LIBC_VERSION') or '').startswith('glibc')
    except (ValueError, OSError):  # no such name on this platform
        return False
