"""What the networks took from ``basicsr.archs``, so that they build and run with torch alone (ComfyUI, chaiNNer):
registration into BasicSR's ``ARCH_REGISTRY`` when basicsr is importable, and BasicSR's ``Upsample``."""
import contextlib
import math
from typing import Callable, TypeVar

import torch
import torch.utils.checkpoint as checkpoint
from torch import nn

from dvmsr_mma.ops.dispatch import ops_path, requested_path
from dvmsr_mma.utils import basicsr_importable

T = TypeVar('T')


def register_arch(obj: T) -> T:
    """``@ARCH_REGISTRY.register()`` where basicsr is importable (``type: NAME`` in option files), else nothing:
    the class or preset stays usable directly."""
    if basicsr_importable():
        from basicsr.utils.registry import ARCH_REGISTRY
        ARCH_REGISTRY.register()(obj)
    return obj


class Upsample(nn.Sequential):
    """BasicSR's ``Upsample``, same modules and state-dict keys: (conv to 4C + PixelShuffle(2)) x log2(scale), or
    conv to 9C + PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int):
        m = []
        if (scale & (scale - 1)) == 0:  # scale = 2^n
            for _ in range(int(math.log(scale, 2))):
                m.append(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1))
                m.append(nn.PixelShuffle(2))
        elif scale == 3:
            m.append(nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1))
            m.append(nn.PixelShuffle(3))
        else:
            raise ValueError(f'scale {scale} is not supported. Supported scales: 2^n and 3.')
        super().__init__(*m)


def checkpoint_block(block: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` under ``torch.utils.checkpoint`` (non-reentrant), its recompute on the ops path its forward was
    asked for: a forward under ``force_torch_ops()`` whose backward runs after the block would otherwise recompute
    on the automatic path, and torch refuses the different saved tensors (``CheckpointError``)."""
    requested = requested_path()[0]
    return checkpoint.checkpoint(block, x, use_reentrant=False,
                                 context_fn=lambda: (contextlib.nullcontext(), ops_path(requested)))
