"""A shorter OpenMP spin-wait for torch's threads, set on import before torch loads.

GNU OpenMP (torch's on Linux) makes a thread that reaches a barrier spin for ``GOMP_SPINCOUNT`` iterations
(300,000 by default, about a millisecond) before it sleeps. On a busy machine those spins take the time slice
that a descheduled peer needs to reach the barrier, at every matmul and convolution: DVMSR x4 at 128x128 with
two busy processes beside it ran 2.8x-3.8x its quiet time with the default and 1.9x-2.4x with 1000, with no
quiet slowdown measured (see the README). Only a default: a value the user set is kept, and nothing changes once
torch (hence libgomp) is already loaded, since libgomp reads it once.
"""
import os
import sys

SPINCOUNT = '1000'


def set_spin_default() -> None:
    """``GOMP_SPINCOUNT=1000`` unless set already or torch has been imported (it would have no effect)."""
    if 'torch' not in sys.modules:
        os.environ.setdefault('GOMP_SPINCOUNT', SPINCOUNT)
