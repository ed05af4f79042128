"""DVMSR (Lei et al., NTIRE 2024 ESR): conv -> RSSBs of ViMMs -> LayerNorm -> conv (+ skip) -> pixel shuffle.

Module names, state-dict keys and the forward order follow the released model
(``nathan66666/DVMSR``, ``models/team07_DVMSR.py``) so ``model_zoo/DVMSR.pth`` loads with ``strict=True``.
"""
import math
import warnings

import torch
from torch import nn

from dvmsr_mma.archs.arch_util import Upsample, checkpoint_block, register_arch
from dvmsr_mma.archs.mamba_block import DropPath, Mamba

__all__ = ['DVMSR', 'RSSB', 'ViMM']


class ViMM(nn.Module):
    """Vision Mamba Module: tokens (b, l, c) -> Mamba(LayerNorm(drop_path(x))).

    No inner skip: the paper's Eq. 4 writes ``+ X`` but the released ``Block`` returns the mixer output
    only (``BasicLayer`` keeps ``blk(x, x_size)[0]``) and the weights were trained that way; the RSSB skip is
    the only residual. Drop-path acts on the block input, as there (``x_size`` lands in ``residual``).
    """

    def __init__(self, dim, ssm_cfg=None, norm_epsilon=1e-5, drop_path=0., layer_idx=None):
        super().__init__()
        self.mixer = Mamba(dim, layer_idx=layer_idx, **(ssm_cfg or {}))
        self.norm = nn.LayerNorm(dim, eps=norm_epsilon)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        x = self.norm(self.drop_path(x).to(dtype=self.norm.weight.dtype))
        return self.mixer(x)


class ViMMGroup(nn.Module):
    """The ``residual_group`` of an RSSB (official ``BasicLayer``): ViMMs in sequence, no skip."""

    def __init__(self, dim, depth, ssm_cfg=None, norm_epsilon=1e-5, drop_path=0., layer_idx=None,
                 use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            ViMM(dim, ssm_cfg, norm_epsilon, drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                 layer_idx) for i in range(depth)
        ])

    def forward(self, x):
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint_block(blk, x)
            else:
                x = blk(x)
        return x


class RSSB(nn.Module):
    """Residual State Space Block: tokens -> ViMMs -> 3x3 conv on the (h, w) map -> + input (official ``RMMB``)."""

    def __init__(self, dim, depth, ssm_cfg=None, norm_epsilon=1e-5, drop_path=0., layer_idx=None,
                 use_checkpoint=False, resi_connection='1conv'):
        super().__init__()
        self.dim = dim
        self.residual_group = ViMMGroup(dim, depth, ssm_cfg, norm_epsilon, drop_path, layer_idx, use_checkpoint)
        if resi_connection == '1conv':
            self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        elif resi_connection == '3conv':
            self.conv = nn.Sequential(
                nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(dim // 4, dim, 3, 1, 1))
        else:
            raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")

    def forward(self, x, x_size):
        """x: (b, h*w, c) tokens, row-major; x_size: (h, w)."""
        y = self.residual_group(x)
        y = tokens_to_map(y, x_size)
        return map_to_tokens(self.conv(y)) + x


def tokens_to_map(x, x_size):
    """Row-major tokens (b, h*w, c) -> a (b, c, h, w) view in channels_last memory: no copy, and the conv that reads
    it runs channels_last and gives a map :func:`map_to_tokens` turns back into tokens without a copy either."""
    return x.unflatten(1, x_size).permute(0, 3, 1, 2)


def map_to_tokens(x):
    """(b, c, h, w) -> (b, h*w, c); a view when x is channels_last."""
    return x.flatten(2).transpose(1, 2)


class PatchEmbed(nn.Module):
    """Feature map (b, c, h, w) -> row-major tokens (b, h*w, c), then LayerNorm (``patch_embed.norm``)."""

    def __init__(self, embed_dim, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        x = map_to_tokens(x)
        return self.norm(x) if self.norm is not None else x


def trunc_normal_(tensor, std=1., a=-2., b=2.):
    """N(0, std^2) truncated to [a, b] by inverse-CDF sampling (uniform -> erfinv), the timm/old-PyTorch recipe the
    official code carries; drawing the same numbers as it keeps a seeded init identical to the official one."""
    cdf = lambda v: (1. + math.erf(v / math.sqrt(2.))) / 2.  # noqa: E731
    with torch.no_grad():
        tensor.uniform_(2 * cdf(a / std) - 1, 2 * cdf(b / std) - 1).erfinv_()
        return tensor.mul_(std * math.sqrt(2.)).clamp_(min=a, max=b)


@register_arch
class DVMSR(nn.Module):
    """DVMSR; defaults are the released x4 model (embed_dim 60, depths [2, 2, 2, 2], 424,428 parameters).

    Takes the official constructor's argument names, so a YAML written for ``team07_DVMSR.DVMSR`` works
    unchanged; arguments for features the released model does not use (absolute position embedding, RoPE,
    cls token, RMSNorm, patch_size > 1) are accepted at their off values and rejected otherwise. ``img_size``
    is unused: any h x w works. ``d_state``, ``d_conv``, ``expand`` are shorthands merged into ``ssm_cfg``.
    ``bimamba_type`` is passed to the mixers ('v2' makes the ViMMs bidirectional; the released model is 'none').
    Other arguments are ignored, as the official ``**kwargs`` does, with a warning naming them.

    As released, ``drop_path_rate`` defaults to 0.1 (linearly increasing over the ViMMs, first one 0) and
    Linear layers get trunc-normal(0.02) weights and zero biases (``dt_proj.bias`` included: the official
    ``_init_weights`` overrides Mamba's inverse-softplus dt init); ``A_log``/``D`` keep Mamba's init.
    The RGB mean is a non-persistent buffer, not in the state dict (the official ``self.mean`` is a plain
    attribute).
    """

    def __init__(self,
                 img_size=64,
                 patch_size=1,
                 depths=(2, 2, 2, 2),
                 embed_dim=60,
                 channels=3,
                 ssm_cfg=None,
                 drop_rate=0.,
                 drop_path_rate=0.1,
                 norm_layer=nn.LayerNorm,
                 norm_epsilon=1e-5,
                 rms_norm=False,
                 initializer_cfg=None,
                 fused_add_norm=False,
                 residual_in_fp32=False,
                 device=None,
                 dtype=None,
                 ft_seq_len=None,
                 pt_hw_seq_len=14,
                 if_abs_pos_embed=False,
                 if_rope=False,
                 if_rope_residual=True,
                 bimamba_type='none',
                 if_cls_token=False,
                 patch_norm=True,
                 use_checkpoint=False,
                 upscale=4,
                 img_range=1.,
                 upsampler='pixelshuffledirect',
                 resi_connection='1conv',
                 d_state=None,
                 d_conv=None,
                 expand=None,
                 **kwargs):
        super().__init__()
        unsupported = {'patch_size': patch_size != 1, 'rms_norm': rms_norm, 'if_abs_pos_embed': if_abs_pos_embed,
                       'if_rope': if_rope, 'if_cls_token': if_cls_token}
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise NotImplementedError(f'DVMSR: not supported (unused by the released model): {", ".join(bad)}')
        if kwargs:
            warnings.warn(f'DVMSR: ignoring unknown argument(s) {", ".join(kwargs)}, as the official constructor '
                          'does; check network_g for a misspelt name', stacklevel=2)
        if isinstance(norm_layer, str):
            norm_layer = getattr(nn, norm_layer)
        ssm_cfg = dict(ssm_cfg or {})
        for name, value in (('d_state', d_state), ('d_conv', d_conv), ('expand', expand)):
            if value is not None:
                ssm_cfg[name] = value
        ssm_cfg.setdefault('bimamba_type', bimamba_type)
        ssm_cfg.update({'device': device, 'dtype': dtype})

        num_in_ch = num_out_ch = channels
        num_feat = 64
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.embed_dim = self.num_features = embed_dim
        rgb_mean = (0.4488, 0.4371, 0.4040) if channels == 3 else (0., )
        self.register_buffer('mean', torch.tensor(rgb_mean).view(1, -1, 1, 1), persistent=False)

        # 1. shallow features
        self.conv_first = nn.Conv2d(num_in_ch, embed_dim, 3, 1, 1)

        # 2. deep features: (b, c, h, w) -> tokens -> RSSBs -> norm_f -> map -> conv_after_body
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # the official [x.item() for x in ...]
        self.layers = nn.ModuleList()
        for i_layer, depth in enumerate(depths):
            start = sum(depths[:i_layer])
            self.layers.append(
                RSSB(embed_dim, depth, ssm_cfg, norm_epsilon, dpr[start:start + depth], i_layer, use_checkpoint,
                     resi_connection))
        self.norm_f = nn.LayerNorm(embed_dim, eps=norm_epsilon)
        if resi_connection == '1conv':
            self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        else:
            self.conv_after_body = nn.Sequential(
                nn.Conv2d(embed_dim, embed_dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim, 3, 1, 1))

        # 3. reconstruction
        if upsampler == 'pixelshuffledirect':
            # one conv to out_ch * scale^2 + PixelShuffle (official UpsampleOneStep): keys upsample.0.*
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, upscale**2 * num_out_ch, 3, 1, 1), nn.PixelShuffle(upscale))
        elif upsampler == 'pixelshuffle':
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        else:
            raise NotImplementedError(f"upsampler must be 'pixelshuffledirect' or 'pixelshuffle', got {upsampler!r}")

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token', 'dist_token'}

    def forward_body(self, feat):
        """Shallow features (b, c, h, w) -> RSSBs -> norm_f -> (b, c, h, w) (the official ``forward_features``)."""
        b, c, h, w = feat.shape
        x = self.patch_embed(feat)  # (b, c, h, w) -> (b, h*w, c)
        for layer in self.layers:
            x = layer(x, (h, w))
        x = self.norm_f(x.to(dtype=self.norm_f.weight.dtype))
        return tokens_to_map(x, (h, w))

    def forward_features(self, x):
        """Image (b, 3, h, w) in [0, 1] -> deep features (b, embed_dim, h, w) right before the upsampler:
        conv_after_body(body(conv_first(x))) + conv_first(x). (Unlike the official method of the same name,
        this includes conv_after_body and the global skip, so distillation can tap it directly.)"""
        x = (x - self.mean.to(x.dtype)) * self.img_range
        feat = self.conv_first(x)
        return self.conv_after_body(self.forward_body(feat)) + feat

    def forward(self, x):
        x = self.forward_features(x)
        if self.upsampler == 'pixelshuffle':
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        return x / self.img_range + self.mean.to(x.dtype)
