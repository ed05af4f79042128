"""Vision-Mamba super-resolution (DVMSR, MMA) as a BasicSR plugin.

``import dvmsr_mma`` patches basicsr 1.4.2 for current torch/torchvision (see :mod:`dvmsr_mma.training.compat`)
and registers the package's networks and models in BasicSR's registries, when basicsr is installed. Without it
(the inference-only install ComfyUI and chaiNNer use) the networks, :mod:`dvmsr_mma.tools.spandrel` and
:class:`dvmsr_mma.tools.infer.SRInferencer` run on torch and numpy alone. Imported before torch, it also shortens
OpenMP's spin-wait, below.

Layout (each subpackage's docstring says what it holds and what it may import): ``archs`` and ``ops`` (the
networks and their kernels, torch only), ``data`` and ``models`` (BasicSR registries), ``training`` (what a
``basicsr train`` / ``test`` run adds to BasicSR), ``tools`` (inference, export, LAM, benchmarks, spandrel and
ComfyUI), ``cli`` (the ``basicsr`` command), ``demo``, and ``utils`` (leaves every subpackage may import).
``infer`` and ``spandrel`` stand at the root only to keep their public import paths.
"""
import os
import sys

# GNU OpenMP (torch's on Linux) makes a thread that reaches a barrier spin GOMP_SPINCOUNT times (300,000 by default,
# about a millisecond) before it sleeps; on a busy machine those spins take the time slice a descheduled peer needs, at
# every matmul and convolution. 1000 is the package's default (docs/kernels.md has the figures): only a default, a
# value the user set is kept, and only before torch loads, since libgomp reads it once.
if 'torch' not in sys.modules:
    os.environ.setdefault('GOMP_SPINCOUNT', '1000')

from dvmsr_mma.utils import basicsr_importable  # noqa: E402

if basicsr_importable():
    from dvmsr_mma.training import compat

    compat.apply()

    from dvmsr_mma import archs, data, models  # noqa: F401  (registers into BasicSR's registries)

__version__ = '0.3.0'  # CHANGELOG.md
