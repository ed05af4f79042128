"""spandrel support (what chaiNNer and ComfyUI load models with): ``ArchSupport`` entries for DVMSR and MMA.

``dvmsr_mma.spandrel.install()`` adds them to spandrel's ``MAIN_REGISTRY`` (the ``spandrel_extra_arches``
pattern), after which ``spandrel.ModelLoader().load_from_file('DVMSR.pth')`` returns an ``ImageModelDescriptor``.
spandrel unwraps ``params_ema`` / ``params`` itself, so both released DVMSR layouts (``model_zoo/DVMSR.pth``,
``team07_DVMSR.pth`` with the weights at the top level) and BasicSR's ``net_g_<iter>.pth`` load; the flat
``net_g_<iter>.safetensors`` this package's training writes (``params_ema.<name>``, ``params.<name>``) is
unwrapped here.

Every hyperparameter the weights fix is read from the tensor shapes (width, depths / blocks, d_state, expand,
d_conv, dt_rank, scale, channels, the upsampler); what they cannot tell is the released value: ``img_range`` 1
(the released DVMSR and the official MMA option files), the RGB mean of DIV2K. Both networks take any input size
and run in float16 and bfloat16 (the scan keeps an fp32 state on every path), so there are no size requirements
and both precisions are supported. Tiling is discouraged, as spandrel marks SwinIR: a scan sees the whole tile.
"""
from typing import Any, Callable, Dict, List, Mapping

try:
    from spandrel import (MAIN_REGISTRY, Architecture, ArchRegistry, ArchSupport, ImageModelDescriptor,
                          ModelTiling)
    from spandrel.util import KeyCondition, get_pixelshuffle_params, get_seq_len
except ImportError as err:
    raise ImportError("dvmsr_mma.spandrel needs the spandrel package: pip install 'dvmsr_mma[spandrel]'") from err

from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mma_arch import MMA, RGB_MEAN
from dvmsr_mma.weights import state_dict_mismatch

__all__ = ['DVMSRArch', 'MMAArch', 'REGISTRY', 'install']

_DVMSR_MIXER = 'layers.0.residual_group.blocks.0.mixer.'
_MMA_MIXER = 'body.0.attn.mamba.mamba.'


def _unflattened(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``params_ema`` (else ``params``) tensors of a flat training ``.safetensors`` (``dvmsr_mma.checkpoint_io``
    stores ``{param_key: state_dict}`` as ``<param_key>.<name>``), as BasicSR loads them; other dicts as they are."""
    for key in ('params_ema.', 'params.'):
        inner = {k[len(key):]: v for k, v in state.items() if k.startswith(key)}
        if inner:
            return inner
    return state


def _detector(*keys: Any) -> Callable[[Mapping[str, Any]], bool]:
    condition = KeyCondition.has_all(*keys)
    return lambda state: condition(_unflattened(state))


def _mamba_config(state: Mapping[str, Any], prefix: str, d_model: int) -> Dict[str, Any]:
    """The ``Mamba`` arguments its weights fix: d_state, d_conv, expand, dt_rank, conv and linear biases."""
    d_inner, d_state = state[prefix + 'A_log'].shape
    return {'d_state': int(d_state), 'd_conv': int(state[prefix + 'conv1d.weight'].shape[-1]),
            'expand': d_inner // d_model if d_inner % d_model == 0 else d_inner / d_model,
            'dt_rank': int(state[prefix + 'dt_proj.weight'].shape[1]), 'conv_bias': prefix + 'conv1d.bias' in state,
            'bias': prefix + 'in_proj.bias' in state}


def _descriptor(arch: Architecture, model: Any, state: Mapping[str, Any], scale: int, in_ch: int, out_ch: int,
                tags: List[str]) -> ImageModelDescriptor:
    """The descriptor, after checking the rebuilt network fits the weights (one line, not torch's key list)."""
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f'{arch.id}: the weights do not fit the network rebuilt from their shapes: {mismatch}')
    return ImageModelDescriptor(model, dict(state), architecture=arch, purpose='SR' if scale > 1 else 'Restoration',
                                tags=tags, supports_half=True, supports_bfloat16=True, scale=scale,
                                input_channels=in_ch, output_channels=out_ch, tiling=ModelTiling.DISCOURAGED)


class DVMSRArch(Architecture[DVMSR]):
    """DVMSR (NTIRE 2024 ESR): RSSBs of unidirectional (or, ``bimamba_type: v2``, bidirectional) ViMMs."""

    def __init__(self) -> None:
        super().__init__(id='DVMSR', detect=_detector(
            'conv_first.weight', *(_DVMSR_MIXER + k for k in ('A_log', 'in_proj.weight', 'dt_proj.weight')),
            _DVMSR_MIXER + 'x_proj.weight', 'layers.0.residual_group.blocks.0.norm.weight', 'norm_f.weight',
            KeyCondition.has_any('conv_after_body.weight', 'conv_after_body.0.weight'), 'upsample.0.weight'))

    def load(self, state_dict: Mapping[str, Any]) -> ImageModelDescriptor[DVMSR]:
        state_dict = _unflattened(state_dict)
        channels, embed_dim = state_dict['conv_first.weight'].shape[1], state_dict['conv_first.weight'].shape[0]
        depths = [get_seq_len(state_dict, f'layers.{i}.residual_group.blocks')
                  for i in range(get_seq_len(state_dict, 'layers'))]
        ssm_cfg = _mamba_config(state_dict, _DVMSR_MIXER, embed_dim)
        ssm_cfg['bimamba_type'] = 'v2' if _DVMSR_MIXER + 'A_b_log' in state_dict else 'none'
        if 'conv_last.weight' in state_dict:  # conv -> LeakyReLU -> BasicSR Upsample (64 features) -> conv
            upsampler = 'pixelshuffle'
            scale, _ = get_pixelshuffle_params(state_dict, 'upsample')
        else:  # one conv to channels * scale^2 + PixelShuffle
            upsampler = 'pixelshuffledirect'
            scale = int(round((state_dict['upsample.0.weight'].shape[0] // channels) ** 0.5))
        model = DVMSR(depths=depths, embed_dim=embed_dim, channels=channels, ssm_cfg=ssm_cfg, drop_path_rate=0.,
                      patch_norm='patch_embed.norm.weight' in state_dict, upscale=scale, img_range=1.,
                      upsampler=upsampler,
                      resi_connection='1conv' if 'conv_after_body.weight' in state_dict else '3conv')
        tags = [f'{embed_dim}nf', f'{len(depths)}rssb', f'{sum(depths)}vimm']
        return _descriptor(self, model, state_dict, scale, channels, channels, tags)


class MMAArch(Architecture[MMA]):
    """MMA (MMA-B, MMA-T and any other width / depth): MetaFormer blocks with a bidirectional Vim mixer."""

    def __init__(self) -> None:
        super().__init__(id='MMA', detect=_detector(
            'conv_first.weight', 'body.0.norm1.body.weight', _MMA_MIXER + 'A_log', _MMA_MIXER + 'A_b_log',
            'body.0.attn.channel_attention.cab.0.weight', 'body.0.ffn.project_in.weight', 'conv_after_body.weight',
            'upsample.0.weight', 'conv_last.weight'))

    def load(self, state_dict: Mapping[str, Any]) -> ImageModelDescriptor[MMA]:
        state_dict = _unflattened(state_dict)
        in_ch, num_feat = state_dict['conv_first.weight'].shape[1], state_dict['conv_first.weight'].shape[0]
        out_ch = state_dict['conv_last.weight'].shape[0]
        num_block = get_seq_len(state_dict, 'body')
        scale, _ = get_pixelshuffle_params(state_dict, 'upsample', num_feat)
        # MMA's blocks fix the mixer (d_state 16, d_conv 4, expand 2): other shapes are named by _descriptor
        model = MMA(num_in_ch=in_ch, num_out_ch=out_ch, num_feat=num_feat, num_block=num_block, upscale=scale,
                    img_range=1., rgb_mean=RGB_MEAN if in_ch == 3 else (0., ))
        preset = {(192, 24): 'MMA-B', (48, 12): 'MMA-T'}.get((num_feat, num_block))
        tags = [f'{num_feat}nf', f'{num_block}nb'] + ([preset] if preset else [])
        return _descriptor(self, model, state_dict, scale, in_ch, out_ch, tags)


REGISTRY = ArchRegistry()
REGISTRY.add(ArchSupport.from_architecture(DVMSRArch()), ArchSupport.from_architecture(MMAArch()))


def install(*, ignore_duplicates: bool = False) -> List[ArchSupport]:
    """Add DVMSR and MMA to spandrel's main registry (what ``ModelLoader()`` uses); returns the entries added.
    ``ignore_duplicates``: calling it twice is not an error (the entries already there are kept)."""
    return MAIN_REGISTRY.add(*REGISTRY, ignore_duplicates=ignore_duplicates)
