"""spandrel support (``dvmsr_mma.tools.spandrel``): every arch / preset x scale detected from its checkpoint, with the
hyperparameters read from the shapes, and the descriptor's output equal to the package network's."""
import importlib
import sys
import types

import pytest
import torch

import dvmsr_mma  # noqa: F401
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mma_arch import MMA, MMA_B, MMA_T

spandrel = pytest.importorskip('spandrel')  # the [spandrel] extra, which make test installs
from dvmsr_mma.tools import spandrel as dvmsr_spandrel  # noqa: E402  (after the skip: it needs the extra)

# the registered networks at their real sizes (MMA: the official constructor, with the option files' img_range 1)
PRESETS = {'DVMSR': lambda s: DVMSR(upscale=s), 'MMA': lambda s: MMA(upscale=s, img_range=1.),
           'MMA_B': lambda s: MMA_B(upscale=s), 'MMA_T': lambda s: MMA_T(upscale=s)}


@pytest.fixture(scope='module', autouse=True)
def installed():
    dvmsr_spandrel.install(ignore_duplicates=True)


def randomized(net):
    """Random values in every tensor, so that a wrongly mapped weight shows in the output."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.state_dict().values():
            p.copy_(torch.randn_like(p) * 0.05)
    return net.eval()


def load(tmp_path, checkpoint, name='net.pth'):
    torch.save(checkpoint, tmp_path / name)
    return spandrel.ModelLoader().load_from_file(str(tmp_path / name))


def assert_same_output(descriptor, net, h=8, w=7):
    x = torch.rand(1, descriptor.input_channels, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(x).clamp(0, 1)
    got = descriptor(x)
    assert got.shape == (1, descriptor.output_channels, h * descriptor.scale, w * descriptor.scale)
    assert torch.equal(got, want)


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('arch', list(PRESETS))
def test_every_arch_and_scale_loads_and_matches(arch, scale, tmp_path):
    torch.manual_seed(scale)
    net = PRESETS[arch](scale).eval()
    descriptor = load(tmp_path, {'params': net.state_dict()})
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    assert descriptor.architecture.id == ('DVMSR' if arch == 'DVMSR' else 'MMA')
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (scale, 3, 3)
    assert descriptor.purpose == 'SR' and descriptor.size_requirements.none
    assert descriptor.supports_half and descriptor.supports_bfloat16
    assert type(descriptor.model) is type(net)
    assert sum(p.numel() for p in descriptor.model.parameters()) == sum(p.numel() for p in net.parameters())
    assert_same_output(descriptor, net, 5, 4)  # small: MMA-B has 24 blocks


@pytest.mark.parametrize('layout', ['params_and_params_ema', 'top_level', 'module_prefix'])
def test_released_dvmsr_layouts(layout, tmp_path):
    """model_zoo/DVMSR.pth holds {params, params_ema} (spandrel takes params_ema, as BasicSR's param_key_g does);
    team07_DVMSR.pth the weights at the top level."""
    torch.manual_seed(0)
    student, ema = DVMSR().eval(), DVMSR().eval()
    checkpoint = {'params_and_params_ema': {'params': student.state_dict(), 'params_ema': ema.state_dict()},
                  'top_level': ema.state_dict(),
                  'module_prefix': {f'module.{k}': v for k, v in ema.state_dict().items()}}[layout]
    descriptor = load(tmp_path, checkpoint)
    assert descriptor.architecture.id == 'DVMSR' and descriptor.scale == 4
    assert descriptor.tags == ['60nf', '4rssb', '8vimm']
    assert_same_output(descriptor, ema)


def test_basicsr_training_checkpoint(tmp_path):
    """net_g_<iter>.pth as BasicSR's BaseModel.save_network writes it during training (params and params_ema)."""
    from basicsr.models.base_model import BaseModel
    torch.manual_seed(0)
    net, net_ema = MMA_T(upscale=2, num_block=2).eval(), MMA_T(upscale=2, num_block=2).eval()
    model = types.SimpleNamespace(opt={'path': {'models': str(tmp_path)}, 'logger': {}},
                                  get_bare_model=lambda n: n)
    BaseModel.save_network(model, [net, net_ema], 'net_g', 5, param_key=['params', 'params_ema'])
    descriptor = spandrel.ModelLoader().load_from_file(str(tmp_path / 'net_g_5.pth'))
    assert descriptor.architecture.id == 'MMA' and descriptor.scale == 2 and '2nb' in descriptor.tags
    assert_same_output(descriptor, net_ema)


def test_training_safetensors_checkpoint(tmp_path):
    """net_g_<iter>.safetensors as training writes it with logger.save_checkpoint_format: safetensors (flat
    params.<name> and params_ema.<name>): the EMA weights load."""
    from dvmsr_mma.utils.checkpoint_io import atomic_safetensors_save
    torch.manual_seed(0)
    net, net_ema = randomized(DVMSR(embed_dim=8, depths=[1], upscale=3)), DVMSR(embed_dim=8, depths=[1], upscale=3)
    atomic_safetensors_save({'params': net.state_dict(), 'params_ema': net_ema.eval().state_dict()},
                            str(tmp_path / 'net_g_5.safetensors'))
    descriptor = spandrel.ModelLoader().load_from_file(str(tmp_path / 'net_g_5.safetensors'))
    assert descriptor.architecture.id == 'DVMSR' and descriptor.scale == 3
    assert_same_output(descriptor, net_ema)


@pytest.mark.parametrize('kwargs', [
    dict(embed_dim=12, depths=[1, 3], upscale=3, d_state=8, expand=1, d_conv=3),
    dict(embed_dim=8, depths=[2], upscale=2, ssm_cfg={'dt_rank': 3, 'bias': True, 'conv_bias': False}),
    dict(embed_dim=8, depths=[1], upscale=4, resi_connection='3conv', patch_norm=False, bimamba_type='v2'),
    dict(embed_dim=8, depths=[1], upscale=2, upsampler='pixelshuffle'),
    dict(embed_dim=8, depths=[1], upscale=3, upsampler='pixelshuffle'),
    dict(embed_dim=8, depths=[1], upscale=2, channels=1),
])
def test_custom_dvmsr_hyperparameters_come_from_the_shapes(kwargs, tmp_path):
    torch.manual_seed(0)
    net = randomized(DVMSR(**kwargs, drop_path_rate=0.))
    descriptor = load(tmp_path, {'params': net.state_dict()})
    assert descriptor.scale == kwargs['upscale'] and descriptor.input_channels == kwargs.get('channels', 3)
    assert_same_output(descriptor, net, 9, 5)


def test_custom_mma_width_depth_and_gray(tmp_path):
    torch.manual_seed(0)
    net = randomized(MMA(num_in_ch=1, num_out_ch=1, num_feat=30, num_block=3, upscale=3, img_range=1.,
                         rgb_mean=(0., )))
    descriptor = load(tmp_path, {'params': net.state_dict()})
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (3, 1, 1)
    assert descriptor.tags == ['30nf', '3nb']
    assert_same_output(descriptor, net, 5, 9)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_run_close_to_float32(dtype, tmp_path):
    torch.manual_seed(0)
    net = DVMSR(embed_dim=8, depths=[1], upscale=2).eval()
    descriptor = load(tmp_path, net.state_dict())
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = descriptor(x)
    got = descriptor.to(dtype)(x.to(dtype)).float()
    assert (got - want).abs().max().item() < (2e-2 if dtype == torch.bfloat16 else 2e-3)


def test_unidentifiable_checkpoint_is_spandrels_error(tmp_path):
    with pytest.raises(spandrel.UnsupportedModelError):
        load(tmp_path, {'encoder.weight': torch.zeros(4, 4)})


@pytest.mark.parametrize('damage, message', [
    (lambda sd: sd.pop('layers.0.conv.weight'), "1 missing (layers.0.conv.weight)"),
    (lambda sd: sd.__setitem__('norm_f.weight', torch.ones(7)), 'norm_f.weight (7,) vs (8,)'),
])
def test_damaged_dvmsr_checkpoint_is_one_line(damage, message, tmp_path):
    state = DVMSR(embed_dim=8, depths=[1], upscale=2).state_dict()
    damage(state)
    with pytest.raises(ValueError) as err:
        load(tmp_path, state)
    assert message in str(err.value) and 'rebuilt from their shapes' in str(err.value) and '\n' not in str(err.value)


def test_install_adds_both_once():
    registry = spandrel.MAIN_REGISTRY
    assert 'DVMSR' in registry and 'MMA' in registry
    assert dvmsr_spandrel.install(ignore_duplicates=True) == []
    with pytest.raises(spandrel.DuplicateArchitectureError):
        dvmsr_spandrel.install()


def test_missing_spandrel_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'spandrel', None)
    monkeypatch.delitem(sys.modules, 'dvmsr_mma.tools.spandrel')
    with pytest.raises(ImportError) as err:
        importlib.import_module('dvmsr_mma.tools.spandrel')
    assert "pip install 'dvmsr_mma[spandrel]'" in str(err.value) and '\n' not in str(err.value)
