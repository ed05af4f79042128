"""Which network a checkpoint holds, read from its tensor shapes: the one detection behind ``basicsr infer`` /
``export`` / ``lam`` / ``bench --weights W`` without ``--arch`` and the spandrel entries (:mod:`.spandrel`).

Every hyperparameter the weights fix comes from the shapes (width, depths / blocks, d_state, expand, d_conv,
dt_rank, scale, channels, the upsampler); what they cannot tell is the released value: ``img_range`` 1 (the
released DVMSR and the official MMA option files) and the RGB mean of DIV2K. Torch only: no basicsr, no spandrel.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from torch import nn

from dvmsr_mma.utils.errors import OptionError

__all__ = ['DetectedNetwork', 'detect', 'is_dvmsr', 'is_mma', 'unflattened', 'check_agrees']

DVMSR_MIXER = 'layers.0.residual_group.blocks.0.mixer.'
MMA_MIXER = 'body.0.attn.mamba.mamba.'
_DVMSR_KEYS = ('conv_first.weight', *(DVMSR_MIXER + k for k in ('A_log', 'in_proj.weight', 'dt_proj.weight',
                                                               'x_proj.weight')),
               'layers.0.residual_group.blocks.0.norm.weight', 'norm_f.weight', 'upsample.0.weight')
_MMA_KEYS = ('conv_first.weight', 'body.0.norm1.body.weight', MMA_MIXER + 'A_log', MMA_MIXER + 'A_b_log',
             'body.0.attn.channel_attention.cab.0.weight', 'body.0.ffn.project_in.weight', 'conv_after_body.weight',
             'upsample.0.weight', 'conv_last.weight')
# registry names that build an MMA: the presets are MMA at fixed (num_feat, num_block)
MMA_NAMES = {'MMA': None, 'MMA_B': (192, 24), 'MMA_T': (48, 12)}


@dataclass
class DetectedNetwork:
    """What a state dict holds: ``arch`` ('DVMSR' or 'MMA'), the constructor arguments, scale and channels."""
    arch: str
    kwargs: Dict[str, Any]
    scale: int
    in_channels: int
    out_channels: int
    tags: List[str] = field(default_factory=list)

    def build(self) -> nn.Module:
        """The network, random weights (load the state dict next)."""
        if self.arch == 'DVMSR':
            from dvmsr_mma.archs.dvmsr_arch import DVMSR
            return DVMSR(**self.kwargs)
        from dvmsr_mma.archs.mma_arch import MMA
        return MMA(**self.kwargs)

    def describe(self) -> str:
        return f'{self.arch} x{self.scale} ({", ".join(self.tags)})'


def unflattened(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``params_ema`` (else ``params``) tensors of a flat training ``.safetensors`` (``utils.checkpoint_io``
    stores ``{param_key: state_dict}`` as ``<param_key>.<name>``), as BasicSR loads them; other dicts as they are."""
    for key in ('params_ema.', 'params.'):
        inner = {k[len(key):]: v for k, v in state.items() if k.startswith(key)}
        if inner:
            return inner
    return state


def _seq_len(state: Mapping[str, Any], prefix: str) -> int:
    """Length of the ``nn.Sequential`` / ``ModuleList`` at ``prefix``: the largest ``prefix.<i>.`` index + 1."""
    indices = [k[len(prefix) + 1:].split('.', 1)[0] for k in state if k.startswith(prefix + '.')]
    return max((int(i) + 1 for i in indices if i.isdigit()), default=0)


def _pixelshuffle_scale(state: Mapping[str, Any], prefix: str) -> int:
    """The factor of BasicSR's ``Upsample`` (conv to 4C or 9C, PixelShuffle, repeated) at ``prefix``."""
    scale = 1
    for i in range(0, _seq_len(state, prefix), 2):
        out_ch, in_ch = state[f'{prefix}.{i}.weight'].shape[:2]
        scale *= math.isqrt(out_ch // in_ch)
    return scale


def is_dvmsr(state: Mapping[str, Any]) -> bool:
    state = unflattened(state)
    return all(k in state for k in _DVMSR_KEYS) and ('conv_after_body.weight' in state
                                                     or 'conv_after_body.0.weight' in state)


def is_mma(state: Mapping[str, Any]) -> bool:
    state = unflattened(state)
    return all(k in state for k in _MMA_KEYS)


def _mamba_config(state: Mapping[str, Any], prefix: str, d_model: int) -> Dict[str, Any]:
    """The ``Mamba`` arguments its weights fix: d_state, d_conv, expand, dt_rank, conv and linear biases."""
    d_inner, d_state = state[prefix + 'A_log'].shape
    return {'d_state': int(d_state), 'd_conv': int(state[prefix + 'conv1d.weight'].shape[-1]),
            'expand': d_inner // d_model if d_inner % d_model == 0 else d_inner / d_model,
            'dt_rank': int(state[prefix + 'dt_proj.weight'].shape[1]), 'conv_bias': prefix + 'conv1d.bias' in state,
            'bias': prefix + 'in_proj.bias' in state}


def _dvmsr(state: Mapping[str, Any]) -> DetectedNetwork:
    channels, embed_dim = state['conv_first.weight'].shape[1], state['conv_first.weight'].shape[0]
    depths = [_seq_len(state, f'layers.{i}.residual_group.blocks') for i in range(_seq_len(state, 'layers'))]
    ssm_cfg = _mamba_config(state, DVMSR_MIXER, embed_dim)
    ssm_cfg['bimamba_type'] = 'v2' if DVMSR_MIXER + 'A_b_log' in state else 'none'
    if 'conv_last.weight' in state:  # conv -> LeakyReLU -> BasicSR Upsample (64 features) -> conv
        upsampler, scale = 'pixelshuffle', _pixelshuffle_scale(state, 'upsample')
    else:  # one conv to channels * scale^2 + PixelShuffle
        upsampler = 'pixelshuffledirect'
        scale = math.isqrt(state['upsample.0.weight'].shape[0] // channels)
    kwargs = dict(depths=depths, embed_dim=int(embed_dim), channels=int(channels), ssm_cfg=ssm_cfg,
                  drop_path_rate=0., patch_norm='patch_embed.norm.weight' in state, upscale=scale, img_range=1.,
                  upsampler=upsampler, resi_connection='1conv' if 'conv_after_body.weight' in state else '3conv')
    tags = [f'{embed_dim}nf', f'{len(depths)}rssb', f'{sum(depths)}vimm']
    return DetectedNetwork('DVMSR', kwargs, scale, int(channels), int(channels), tags)


def _mma(state: Mapping[str, Any]) -> DetectedNetwork:
    from dvmsr_mma.archs.mma_arch import RGB_MEAN
    in_ch, num_feat = state['conv_first.weight'].shape[1], state['conv_first.weight'].shape[0]
    out_ch = state['conv_last.weight'].shape[0]
    num_block = _seq_len(state, 'body')
    scale = _pixelshuffle_scale(state, 'upsample')
    # MMA's blocks fix the mixer (d_state 16, d_conv 4, expand 2): other shapes fail the strict load, named
    kwargs = dict(num_in_ch=int(in_ch), num_out_ch=int(out_ch), num_feat=int(num_feat), num_block=num_block,
                  upscale=scale, img_range=1., rgb_mean=RGB_MEAN if in_ch == 3 else (0., ))
    preset = {size: name for name, size in MMA_NAMES.items() if size}.get((num_feat, num_block))
    tags = [f'{num_feat}nf', f'{num_block}nb'] + ([preset.replace('_', '-')] if preset else [])
    return DetectedNetwork('MMA', kwargs, scale, int(in_ch), int(out_ch), tags)


def detect(state: Mapping[str, Any]) -> Optional[DetectedNetwork]:
    """The DVMSR or MMA network ``state`` (a state dict, or a flat training ``.safetensors``) holds; None for any
    other network."""
    state = unflattened(state)
    if is_dvmsr(state):
        return _dvmsr(state)
    if is_mma(state):
        return _mma(state)
    return None


def check_agrees(found: DetectedNetwork, path: str, arch: Optional[str], scale: Optional[int]) -> None:
    """One line when ``--arch`` or ``--scale`` contradicts what the checkpoint holds; both may be left out."""
    if arch is not None:
        family = 'MMA' if arch in MMA_NAMES else arch
        size = MMA_NAMES.get(arch)
        kw = found.kwargs
        if family != found.arch or (size and (kw['num_feat'], kw['num_block']) != size):
            want = f' ({size[0]} features, {size[1]} blocks)' if size else ''
            raise OptionError(f'--arch {arch}{want}: {path} holds {found.describe()}; drop --arch (the checkpoint '
                              'says which network it is)')
    if scale is not None and scale != found.scale:
        raise OptionError(f'--scale {scale}: {path} holds {found.describe()}, which upscales x{found.scale}; '
                          'drop --scale')
