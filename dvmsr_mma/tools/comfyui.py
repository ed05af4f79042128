"""The ComfyUI custom node (folder ``ComfyUI-DVMSR-MMA/`` of the repository, copied or linked into
``ComfyUI/custom_nodes/``): it adds no nodes. Loading it adds DVMSR and MMA to spandrel's registry, which ComfyUI's
own ``Load Upscale Model`` (``UpscaleModelLoader``) and ``Upscale Image (using Model)`` nodes load models with,
so both networks' checkpoints in ``models/upscale_models/`` work there. Without it spandrel refuses them
(``UnsupportedModelError``). Needs torch, numpy and spandrel, which ComfyUI has; no basicsr."""
import logging
from typing import Dict, List

NODE_CLASS_MAPPINGS: Dict[str, type] = {}  # ComfyUI's own upscale nodes do the work
NODE_DISPLAY_NAME_MAPPINGS: Dict[str, str] = {}


def load() -> List[str]:
    """Add the architectures to spandrel's ``MAIN_REGISTRY`` (again on a reload: a no-op) and log one line;
    returns their ids."""
    from dvmsr_mma import __version__
    from dvmsr_mma.tools import spandrel
    spandrel.install(ignore_duplicates=True)
    ids = [entry.architecture.id for entry in spandrel.REGISTRY]
    logging.getLogger(__name__).info('dvmsr_mma %s: spandrel loads %s checkpoints now (Load Upscale Model)',
                                     __version__, ' and '.join(ids))
    return ids
