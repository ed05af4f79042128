"""``dvmsr_mma.spandrel``, the import path chaiNNer / ComfyUI users call ``install()`` from, kept at the root where
0.2 had it: this name is :mod:`dvmsr_mma.tools.spandrel` itself."""
import sys

from dvmsr_mma.tools import spandrel

sys.modules[__name__] = spandrel
