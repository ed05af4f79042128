"""ComfyUI custom node: DVMSR and MMA checkpoints in ComfyUI's own Load Upscale Model node.

The code lives in the dvmsr_mma package (``dvmsr_mma.tools.comfyui``), installed into ComfyUI's Python; this folder
is what ComfyUI loads (README.md here says how to install both). Without the package, or with one too old for this
folder, it registers stand-ins with spandrel that recognize DVMSR and MMA checkpoints and fail with what to
install: a workflow that loads one then says so, instead of spandrel's empty ``UnsupportedModelError``.
"""
import logging
import sys
from typing import Dict

NODE_CLASS_MAPPINGS: Dict[str, type] = {}  # ComfyUI's own upscale nodes do the work
NODE_DISPLAY_NAME_MAPPINGS: Dict[str, str] = {}
# a key only each network's checkpoints hold (the first Mamba mixer's A_log), as spandrel hands them over
MARKERS = {'DVMSR': 'layers.0.residual_group.blocks.0.mixer.A_log', 'MMA': 'body.0.attn.mamba.mamba.A_log'}


class PackageMissing(ImportError):
    """A DVMSR or MMA checkpoint reached spandrel while the dvmsr_mma package is not installed."""


def install_hint(reason: str) -> str:
    return (f'the dvmsr_mma package, which loads DVMSR and MMA checkpoints, is not installed in ComfyUI\'s Python '
            f'({reason}): run "{sys.executable}" -m pip install "<dvmsr_mma wheel or checkout>[spandrel]" and '
            'restart ComfyUI (custom_nodes/ComfyUI-DVMSR-MMA/README.md; the package is on no package index)')


def register_stand_ins(hint: str) -> None:
    """spandrel entries that take DVMSR and MMA checkpoints and raise :class:`PackageMissing` with ``hint``."""
    from spandrel import MAIN_REGISTRY, Architecture, ArchSupport

    class Missing(Architecture):
        def __init__(self, arch: str, marker: str) -> None:
            super().__init__(id=f'{arch} (dvmsr_mma missing)',
                             detect=lambda state: any(key.endswith(marker) for key in state))
            self.arch = arch

        def load(self, state_dict):
            raise PackageMissing(f'ComfyUI-DVMSR-MMA: this is a {self.arch} checkpoint, and {hint}')

    MAIN_REGISTRY.add(*(ArchSupport.from_architecture(Missing(arch, marker)) for arch, marker in MARKERS.items()),
                      ignore_duplicates=True)


try:
    from dvmsr_mma.tools.comfyui import load
except ImportError as err:
    HINT = install_hint(str(err))
    register_stand_ins(HINT)
    logging.getLogger(__name__).warning('ComfyUI-DVMSR-MMA: %s', HINT)
else:
    load()

__all__ = ['NODE_CLASS_MAPPINGS', 'NODE_DISPLAY_NAME_MAPPINGS']
