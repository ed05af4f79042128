"""ComfyUI custom node: DVMSR and MMA checkpoints in ComfyUI's own Load Upscale Model node.

See dvmsr_mma.tools.comfyui.

The code lives in the dvmsr_mma package, installed into ComfyUI's Python; this folder is what ComfyUI loads.
"""
import sys

try:
    from dvmsr_mma.tools.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, load
except ImportError as err:
    raise ImportError(f'ComfyUI-DVMSR-MMA needs the dvmsr_mma package in ComfyUI\'s Python ({sys.executable}): '
                      f'{sys.executable} -m pip install "<dvmsr_mma checkout>[spandrel]" ({err})') from err

load()

__all__ = ['NODE_CLASS_MAPPINGS', 'NODE_DISPLAY_NAME_MAPPINGS']
