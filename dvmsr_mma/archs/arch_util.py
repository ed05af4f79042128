"""What the networks took from ``basicsr.archs``, so that they build and run with torch alone (ComfyUI, chaiNNer):
registration into BasicSR's ``ARCH_REGISTRY`` when basicsr is importable, and BasicSR's ``Upsample``."""
import math
from typing import TypeVar

from torch import nn

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
