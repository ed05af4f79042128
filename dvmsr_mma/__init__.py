"""Vision-Mamba super-resolution (DVMSR, MMA) as a BasicSR plugin.

``import dvmsr_mma`` patches basicsr 1.4.2 for current torch/torchvision (see :mod:`dvmsr_mma.compat`)
and registers the package's networks and models in BasicSR's registries, when basicsr is installed. Without it
(the inference-only install ComfyUI and chaiNNer use) the networks, :mod:`dvmsr_mma.spandrel` and
:class:`dvmsr_mma.infer.SRInferencer` run on torch and numpy alone. Imported before torch, it also shortens
OpenMP's spin-wait (see :mod:`dvmsr_mma.openmp_env`).
"""
from dvmsr_mma import openmp_env

openmp_env.set_spin_default()

from dvmsr_mma.utils import basicsr_importable  # noqa: E402

if basicsr_importable():
    from dvmsr_mma import compat

    compat.apply()

    from dvmsr_mma import archs, data, models  # noqa: F401  (registers into BasicSR's registries)

__version__ = '0.2.0'  # CHANGELOG.md
