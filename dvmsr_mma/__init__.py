"""Vision-Mamba super-resolution (DVMSR, MMA) as a BasicSR plugin.

``import dvmsr_mma`` patches basicsr 1.4.2 for current torch/torchvision (see :mod:`dvmsr_mma.compat`)
and registers the package's networks and models in BasicSR's registries.
"""
from dvmsr_mma import compat

compat.apply()

from dvmsr_mma import archs, data, models  # noqa: E402,F401  (registers into BasicSR's registries)

__version__ = '0.1.0'
