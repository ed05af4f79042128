"""MMA (Cheng et al., "Activating Wider Areas in Image Super-Resolution"): conv -> MetaFormer blocks whose token
mixer is a bidirectional Vim branch plus a channel-attention branch -> conv (+ skip) -> pixel-shuffle upsampler.

Module names and the forward follow ``ArsenalCheng/MMA`` (``basicsr/archs/mma_arch.py`` and
``basicsr/archs/mlpmixer_util.py``, Mamba from Vim's ``mamba_ssm`` fork with ``bimamba_type='v2'``), so its
checkpoints and option files work unchanged.
"""
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from dvmsr_mma.archs.arch_util import Upsample, checkpoint_block, register_arch
from dvmsr_mma.archs.mamba_block import Mamba

__all__ = ['MMA', 'MMABlock', 'MMA_B', 'MMA_T']

RGB_MEAN = (0.4488, 0.4371, 0.4040)


class ChannelLayerNorm(nn.Module):
    """Restormer's 'WithBias' LayerNorm over channels of a (b, c, h, w) map (biased variance, eps 1e-5).

    Parameters sit in ``.body`` as in the official ``LayerNorm(dim, 'WithBias')`` (keys ``norm1.body.weight``).
    """

    def __init__(self, dim):
        super().__init__()
        self.body = _LayerNormParams(dim)

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), self.body.weight, self.body.bias, 1e-5)
        return x.permute(0, 3, 1, 2)  # (b, h, w, c) -> (b, c, h, w)


class _LayerNormParams(nn.Module):

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class VimBranch(nn.Module):
    """Bidirectional Vim mixer on the row-major flattened map (official ``MambaLayer``; keys ``mamba.*``)."""

    def __init__(self, dim, d_state=16, d_conv=4, expand=2):
        super().__init__()
        self.dim = dim
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, bimamba_type='v2')

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.mamba(x.reshape(b, c, h * w).transpose(1, 2))  # (b, c, h, w) -> (b, h*w, c)
        return y.transpose(1, 2).reshape(b, c, h, w)


class ChannelAttention(nn.Module):
    """Squeeze-excitation (RCAN): global pool -> 1x1 conv c -> c // squeeze -> ReLU -> 1x1 conv -> sigmoid gate."""

    def __init__(self, num_feat, squeeze_factor=30):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True), nn.Conv2d(num_feat // squeeze_factor, num_feat, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention branch: 3x3 conv c -> c // compress, GELU, 3x3 conv back, squeeze-excitation (keys cab.*)."""

    def __init__(self, num_feat, compress_ratio=4, squeeze_factor=30):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x)


class HybridMixer(nn.Module):
    """Token mixer: Vim branch + channel-attention branch, plain sum (official ``HybridAttBlock``)."""

    def __init__(self, dim):
        super().__init__()
        self.mamba = VimBranch(dim)
        self.channel_attention = CAB(dim, compress_ratio=4, squeeze_factor=30)

    def forward(self, x):
        return self.mamba(x) + self.channel_attention(x)


class GatedDconvFFN(nn.Module):
    """Restormer GDFN: 1x1 conv to 2 * hidden, 3x3 depthwise conv, GELU(x1) * x2, 1x1 conv back."""

    def __init__(self, dim, ffn_expansion_factor=2.66, bias=True):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1, groups=hidden * 2,
                                bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class MMABlock(nn.Module):
    """MetaFormer block (official ``MLPMixer``): x + mixer(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, dim, ffn_expansion_factor=2.66, bias=True):
        super().__init__()
        self.dim = dim
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = HybridMixer(dim)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedDconvFFN(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


@register_arch
class MMA(nn.Module):
    """MMA with the official constructor (defaults included: ``img_range=255.``, ``num_feat=64``,
    ``num_block=16``; the official option files pass ``img_range: 1.`` and the sizes explicitly, and so do
    :func:`MMA_B` / :func:`MMA_T`). No custom init: PyTorch defaults and Mamba's own, as upstream.
    The RGB mean is a non-persistent buffer (a plain attribute upstream), so not in the state dict.

    ``use_checkpoint``: recompute each block in backward (torch.utils.checkpoint, non-reentrant) when training.
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=16,
                 upscale=4,
                 img_range=255.,
                 rgb_mean=RGB_MEAN,
                 use_checkpoint=False):
        super().__init__()
        self.img_range = img_range
        self.upscale = upscale
        self.use_checkpoint = use_checkpoint
        self.register_buffer('mean', torch.tensor(rgb_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[MMABlock(num_feat) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)  # (conv to 4C + PixelShuffle(2)) x log2(s), or 9C + PS(3)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward_body(self, feat):
        """Shallow features (b, c, h, w) -> the K blocks -> (b, c, h, w)."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            for blk in self.body:
                feat = checkpoint_block(blk, feat)
            return feat
        return self.body(feat)

    def forward_features(self, x):
        """Image (b, 3, h, w) in [0, 1] -> deep features (b, num_feat, h, w) before the upsampler:
        conv_after_body(body(conv_first(x))) + conv_first(x)."""
        x = (x - self.mean.to(x.dtype)) * self.img_range
        feat = self.conv_first(x.contiguous(memory_format=torch.channels_last))
        return self.conv_after_body(self.forward_body(feat)) + feat

    def forward(self, x):
        x = self.conv_last(self.upsample(self.forward_features(x)))
        return (x / self.img_range + self.mean.to(x.dtype)).contiguous()


MMA_B_SETTINGS = dict(num_in_ch=3, num_out_ch=3, num_feat=192, num_block=24, img_range=1., rgb_mean=RGB_MEAN)
MMA_T_SETTINGS = dict(num_in_ch=3, num_out_ch=3, num_feat=48, num_block=12, img_range=1., rgb_mean=RGB_MEAN)


def _lists_mma_arguments(settings):
    """Give ``preset(upscale=2, **overrides)`` a signature naming the MMA arguments the overrides may be, with the
    preset's ``settings`` as their defaults, so the option checks can name an unknown one and ``help()`` shows what
    the preset builds."""

    def decorate(preset):
        mma = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=settings.get(p.name, p.default))
               for p in inspect.signature(MMA).parameters.values() if p.name != 'upscale']
        preset.__signature__ = inspect.Signature([inspect.signature(preset).parameters['upscale']] + mma)
        return preset

    return decorate


@register_arch
@_lists_mma_arguments(MMA_B_SETTINGS)
def MMA_B(upscale=2, **overrides):  # noqa: N802  (registered name used as YAML `type:`)
    """MMA-B (classic SR, the paper's "MMA"): C = 192, K = 24; 19,824,627 / 21,484,467 / 21,152,499 parameters at
    x2 / x3 / x4. Settings of the official option files (img_range 1); any MMA argument can be overridden."""
    return MMA(**{**MMA_B_SETTINGS, 'upscale': upscale, **overrides})


@register_arch
@_lists_mma_arguments(MMA_T_SETTINGS)
def MMA_T(upscale=2, **overrides):  # noqa: N802
    """MMA-T (lightweight SR): C = 48, K = 12; 795,735 / 899,655 / 878,871 parameters at x2 / x3 / x4.

    K = 12, not the 8 of the paper's text (Sec. 4.1): only 12 blocks reproduce the #Params of the paper's Table 3
    (796K / 899K / 879K); 8 blocks would give about 0.54M at x2. No official MMA-T option file is released.
    """
    return MMA(**{**MMA_T_SETTINGS, 'upscale': upscale, **overrides})
