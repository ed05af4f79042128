"""DVMSR architecture: released state-dict layout, shapes for x2/x3/x4 on odd sizes, gradients, ViMM without skip."""
import io
import os

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY

from dvmsr_mma.archs.dvmsr_arch import DVMSR

# Keys and shapes of the released x4 model (nathan66666/DVMSR model_zoo/DVMSR.pth, 'params_ema' and 'params';
# model_zoo/team07_DVMSR.pth holds the same keys at top level), in state-dict order.
RELEASED_X4 = [
    ('conv_first.weight', (60, 3, 3, 3)),
    ('conv_first.bias', (60,)),
    ('patch_embed.norm.weight', (60,)),
    ('patch_embed.norm.bias', (60,)),
    ('layers.0.residual_group.blocks.0.mixer.A_log', (120, 16)),
    ('layers.0.residual_group.blocks.0.mixer.D', (120,)),
    ('layers.0.residual_group.blocks.0.mixer.in_proj.weight', (240, 60)),
    ('layers.0.residual_group.blocks.0.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.0.residual_group.blocks.0.mixer.conv1d.bias', (120,)),
    ('layers.0.residual_group.blocks.0.mixer.x_proj.weight', (36, 120)),
    ('layers.0.residual_group.blocks.0.mixer.dt_proj.weight', (120, 4)),
    ('layers.0.residual_group.blocks.0.mixer.dt_proj.bias', (120,)),
    ('layers.0.residual_group.blocks.0.mixer.out_proj.weight', (60, 120)),
    ('layers.0.residual_group.blocks.0.norm.weight', (60,)),
    ('layers.0.residual_group.blocks.0.norm.bias', (60,)),
    ('layers.0.residual_group.blocks.1.mixer.A_log', (120, 16)),
    ('layers.0.residual_group.blocks.1.mixer.D', (120,)),
    ('layers.0.residual_group.blocks.1.mixer.in_proj.weight', (240, 60)),
    ('layers.0.residual_group.blocks.1.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.0.residual_group.blocks.1.mixer.conv1d.bias', (120,)),
    ('layers.0.residual_group.blocks.1.mixer.x_proj.weight', (36, 120)),
    ('layers.0.residual_group.blocks.1.mixer.dt_proj.weight', (120, 4)),
    ('layers.0.residual_group.blocks.1.mixer.dt_proj.bias', (120,)),
    ('layers.0.residual_group.blocks.1.mixer.out_proj.weight', (60, 120)),
    ('layers.0.residual_group.blocks.1.norm.weight', (60,)),
    ('layers.0.residual_group.blocks.1.norm.bias', (60,)),
    ('layers.0.conv.weight', (60, 60, 3, 3)),
    ('layers.0.conv.bias', (60,)),
    ('layers.1.residual_group.blocks.0.mixer.A_log', (120, 16)),
    ('layers.1.residual_group.blocks.0.mixer.D', (120,)),
    ('layers.1.residual_group.blocks.0.mixer.in_proj.weight', (240, 60)),
    ('layers.1.residual_group.blocks.0.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.1.residual_group.blocks.0.mixer.conv1d.bias', (120,)),
    ('layers.1.residual_group.blocks.0.mixer.x_proj.weight', (36, 120)),
    ('layers.1.residual_group.blocks.0.mixer.dt_proj.weight', (120, 4)),
    ('layers.1.residual_group.blocks.0.mixer.dt_proj.bias', (120,)),
    ('layers.1.residual_group.blocks.0.mixer.out_proj.weight', (60, 120)),
    ('layers.1.residual_group.blocks.0.norm.weight', (60,)),
    ('layers.1.residual_group.blocks.0.norm.bias', (60,)),
    ('layers.1.residual_group.blocks.1.mixer.A_log', (120, 16)),
    ('layers.1.residual_group.blocks.1.mixer.D', (120,)),
    ('layers.1.residual_group.blocks.1.mixer.in_proj.weight', (240, 60)),
    ('layers.1.residual_group.blocks.1.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.1.residual_group.blocks.1.mixer.conv1d.bias', (120,)),
    ('layers.1.residual_group.blocks.1.mixer.x_proj.weight', (36, 120)),
    ('layers.1.residual_group.blocks.1.mixer.dt_proj.weight', (120, 4)),
    ('layers.1.residual_group.blocks.1.mixer.dt_proj.bias', (120,)),
    ('layers.1.residual_group.blocks.1.mixer.out_proj.weight', (60, 120)),
    ('layers.1.residual_group.blocks.1.norm.weight', (60,)),
    ('layers.1.residual_group.blocks.1.norm.bias', (60,)),
    ('layers.1.conv.weight', (60, 60, 3, 3)),
    ('layers.1.conv.bias', (60,)),
    ('layers.2.residual_group.blocks.0.mixer.A_log', (120, 16)),
    ('layers.2.residual_group.blocks.0.mixer.D', (120,)),
    ('layers.2.residual_group.blocks.0.mixer.in_proj.weight', (240, 60)),
    ('layers.2.residual_group.blocks.0.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.2.residual_group.blocks.0.mixer.conv1d.bias', (120,)),
    ('layers.2.residual_group.blocks.0.mixer.x_proj.weight', (36, 120)),
    ('layers.2.residual_group.blocks.0.mixer.dt_proj.weight', (120, 4)),
    ('layers.2.residual_group.blocks.0.mixer.dt_proj.bias', (120,)),
    ('layers.2.residual_group.blocks.0.mixer.out_proj.weight', (60, 120)),
    ('layers.2.residual_group.blocks.0.norm.weight', (60,)),
    ('layers.2.residual_group.blocks.0.norm.bias', (60,)),
    ('layers.2.residual_group.blocks.1.mixer.A_log', (120, 16)),
    ('layers.2.residual_group.blocks.1.mixer.D', (120,)),
    ('layers.2.residual_group.blocks.1.mixer.in_proj.weight', (240, 60)),
    ('layers.2.residual_group.blocks.1.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.2.residual_group.blocks.1.mixer.conv1d.bias', (120,)),
    ('layers.2.residual_group.blocks.1.mixer.x_proj.weight', (36, 120)),
    ('layers.2.residual_group.blocks.1.mixer.dt_proj.weight', (120, 4)),
    ('layers.2.residual_group.blocks.1.mixer.dt_proj.bias', (120,)),
    ('layers.2.residual_group.blocks.1.mixer.out_proj.weight', (60, 120)),
    ('layers.2.residual_group.blocks.1.norm.weight', (60,)),
    ('layers.2.residual_group.blocks.1.norm.bias', (60,)),
    ('layers.2.conv.weight', (60, 60, 3, 3)),
    ('layers.2.conv.bias', (60,)),
    ('layers.3.residual_group.blocks.0.mixer.A_log', (120, 16)),
    ('layers.3.residual_group.blocks.0.mixer.D', (120,)),
    ('layers.3.residual_group.blocks.0.mixer.in_proj.weight', (240, 60)),
    ('layers.3.residual_group.blocks.0.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.3.residual_group.blocks.0.mixer.conv1d.bias', (120,)),
    ('layers.3.residual_group.blocks.0.mixer.x_proj.weight', (36, 120)),
    ('layers.3.residual_group.blocks.0.mixer.dt_proj.weight', (120, 4)),
    ('layers.3.residual_group.blocks.0.mixer.dt_proj.bias', (120,)),
    ('layers.3.residual_group.blocks.0.mixer.out_proj.weight', (60, 120)),
    ('layers.3.residual_group.blocks.0.norm.weight', (60,)),
    ('layers.3.residual_group.blocks.0.norm.bias', (60,)),
    ('layers.3.residual_group.blocks.1.mixer.A_log', (120, 16)),
    ('layers.3.residual_group.blocks.1.mixer.D', (120,)),
    ('layers.3.residual_group.blocks.1.mixer.in_proj.weight', (240, 60)),
    ('layers.3.residual_group.blocks.1.mixer.conv1d.weight', (120, 1, 4)),
    ('layers.3.residual_group.blocks.1.mixer.conv1d.bias', (120,)),
    ('layers.3.residual_group.blocks.1.mixer.x_proj.weight', (36, 120)),
    ('layers.3.residual_group.blocks.1.mixer.dt_proj.weight', (120, 4)),
    ('layers.3.residual_group.blocks.1.mixer.dt_proj.bias', (120,)),
    ('layers.3.residual_group.blocks.1.mixer.out_proj.weight', (60, 120)),
    ('layers.3.residual_group.blocks.1.norm.weight', (60,)),
    ('layers.3.residual_group.blocks.1.norm.bias', (60,)),
    ('layers.3.conv.weight', (60, 60, 3, 3)),
    ('layers.3.conv.bias', (60,)),
    ('norm_f.weight', (60,)),
    ('norm_f.bias', (60,)),
    ('conv_after_body.weight', (60, 60, 3, 3)),
    ('conv_after_body.bias', (60,)),
    ('upsample.0.weight', (48, 60, 3, 3)),
    ('upsample.0.bias', (48,)),
]
RELEASED_PARAMS_X4 = 424_428
RELEASED_CKPT = 'experiments/pretrained_models/DVMSR.pth'  # user-supplied; the test using it skips without it


def _small(**kwargs):
    cfg = dict(embed_dim=12, depths=[1, 1], drop_path_rate=0.)
    cfg.update(kwargs)
    return DVMSR(**cfg)


def test_registered_with_official_argument_names():
    opt = dict(upscale=4, img_size=64, embed_dim=60, depths=[2, 2, 2, 2], img_range=1., upsampler='pixelshuffledirect',
               resi_connection='1conv', drop_path_rate=0.1,
               mlp_ratio=2.)  # unknown to the official class too: swallowed by **kwargs as there, with a warning
    with pytest.warns(UserWarning, match=r'DVMSR: ignoring unknown argument\(s\) mlp_ratio'):
        net = ARCH_REGISTRY.get('DVMSR')(**opt)
    assert isinstance(net, DVMSR)


def test_state_dict_equals_released_layout():
    net = DVMSR()
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert len(RELEASED_X4) == 106
    assert got == RELEASED_X4
    assert 'mean' not in net.state_dict()  # RGB mean is a non-persistent buffer


def test_parameter_count():
    assert sum(p.numel() for p in DVMSR().parameters()) == RELEASED_PARAMS_X4


def test_official_init():
    net = DVMSR()
    mixer = net.layers[0].residual_group.blocks[0].mixer
    assert torch.equal(mixer.dt_proj.bias, torch.zeros(120))  # official _init_weights zeroes every Linear bias
    assert torch.allclose(mixer.A_log, torch.log(torch.arange(1, 17.)).expand(120, 16))
    assert torch.equal(mixer.D, torch.ones(120))
    # trunc-normal std 0.02 (bounds +-2 absolute, as upstream: effectively a plain normal)
    assert 0.015 < mixer.in_proj.weight.std() < 0.025 and 0.015 < mixer.dt_proj.weight.std() < 0.025


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_forward_odd_size(scale):
    torch.manual_seed(0)
    net = DVMSR(upscale=scale).eval()
    x = torch.rand(1, 3, 17, 23)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 3, 17 * scale, 23 * scale)
    assert torch.isfinite(y).all()
    assert net.forward_features(x).shape == (1, 60, 17, 23)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    net = DVMSR(upscale=2, drop_path_rate=0.).train()
    net(torch.rand(2, 3, 9, 11)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing


def test_state_dict_round_trip_strict():
    torch.manual_seed(0)
    net = _small(upscale=3).eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other = _small(upscale=3).eval()
    other.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = torch.rand(1, 3, 7, 5)
    with torch.no_grad():
        assert torch.equal(net(x), other(x))


def test_vimm_has_no_inner_skip():
    torch.manual_seed(0)
    net = _small().eval()
    block = net.layers[0].residual_group.blocks[0]
    with torch.no_grad():
        block.mixer.out_proj.weight.zero_()
        out = block(torch.randn(2, 35, 12))
    assert torch.equal(out, torch.zeros_like(out))


def test_tokens_scanned_row_major_one_way():
    """The mixer is causal over the row-major token order: changing the last pixel leaves every earlier token."""
    torch.manual_seed(0)
    group = _small().eval().layers[0].residual_group
    x = torch.randn(1, 4 * 5, 12)
    x2 = x.clone()
    x2[:, -1] += 1.
    with torch.no_grad():
        a, b = group(x), group(x2)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def test_drop_path_schedule():
    net = DVMSR(drop_path_rate=0.1)
    rates = [blk.drop_path.drop_prob if hasattr(blk.drop_path, 'drop_prob') else 0.
             for layer in net.layers for blk in layer.residual_group.blocks]
    assert rates[0] == 0. and abs(rates[-1] - 0.1) < 1e-6


def test_use_checkpoint_gives_same_gradients():
    torch.manual_seed(0)
    net = _small().train()
    ckpt = _small(use_checkpoint=True).train()
    ckpt.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 6, 7)
    net(x).sum().backward()
    ckpt(x).sum().backward()
    for (name, p), q in zip(net.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_classical_pixelshuffle_upsampler():
    net = _small(upscale=4, upsampler='pixelshuffle').eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 5, 6)).shape == (1, 3, 20, 24)


@pytest.mark.skipif(not os.path.isfile(RELEASED_CKPT), reason=f'{RELEASED_CKPT} not supplied')
def test_released_checkpoint_loads_strict():
    ckpt = torch.load(RELEASED_CKPT, map_location='cpu', weights_only=True)
    DVMSR().load_state_dict(ckpt.get('params_ema', ckpt), strict=True)


@pytest.mark.cuda
def test_cuda_kernels_match_torch_path():
    from dvmsr_mma.ops import force_torch_ops
    torch.manual_seed(0)
    net = DVMSR(upscale=2, drop_path_rate=0.).cuda().eval()
    x = torch.rand(1, 3, 17, 23, device='cuda')
    with torch.no_grad():
        y_kernel = net(x)
        with force_torch_ops():
            y_torch = net(x)
    torch.testing.assert_close(y_kernel, y_torch, rtol=1e-3, atol=1e-4)
