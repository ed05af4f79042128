"""``dvmsr_mma.infer``, the import path of the inference API in the README and in users' scripts, kept at the root
where 0.2 had it: this name is :mod:`dvmsr_mma.tools.infer` itself (``SRInferencer``, ``load_network``, ...)."""
import sys

from dvmsr_mma.tools import infer

sys.modules[__name__] = infer
