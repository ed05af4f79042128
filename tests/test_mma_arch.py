"""MMA architecture: official state-dict layout and sizes, x2/x3/x4 on odd sizes, gradients, bidirectional Vim."""
import inspect
import io

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY

from dvmsr_mma.archs.mamba_block import Mamba
from dvmsr_mma.archs.mma_arch import MMA, MMA_B, MMA_T

# One MMA-B block (C = 192, d_inner 384, dt_rank 12, GDFN hidden int(192 * 2.66) = 510, CA hidden 192 // 30 = 6),
# keys and shapes of ArsenalCheng/MMA basicsr/archs/mlpmixer_util.py MLPMixer with Vim's Mamba(bimamba_type='v2'),
# in state-dict order (a module's own parameters first, then its submodules in creation order).
MMA_B_BLOCK = [
    ('norm1.body.weight', (192, )),
    ('norm1.body.bias', (192, )),
    ('attn.mamba.mamba.A_log', (384, 16)),
    ('attn.mamba.mamba.D', (384, )),
    ('attn.mamba.mamba.A_b_log', (384, 16)),
    ('attn.mamba.mamba.D_b', (384, )),
    ('attn.mamba.mamba.in_proj.weight', (768, 192)),
    ('attn.mamba.mamba.conv1d.weight', (384, 1, 4)),
    ('attn.mamba.mamba.conv1d.bias', (384, )),
    ('attn.mamba.mamba.x_proj.weight', (44, 384)),
    ('attn.mamba.mamba.dt_proj.weight', (384, 12)),
    ('attn.mamba.mamba.dt_proj.bias', (384, )),
    ('attn.mamba.mamba.conv1d_b.weight', (384, 1, 4)),
    ('attn.mamba.mamba.conv1d_b.bias', (384, )),
    ('attn.mamba.mamba.x_proj_b.weight', (44, 384)),
    ('attn.mamba.mamba.dt_proj_b.weight', (384, 12)),
    ('attn.mamba.mamba.dt_proj_b.bias', (384, )),
    ('attn.mamba.mamba.out_proj.weight', (192, 384)),
    ('attn.channel_attention.cab.0.weight', (48, 192, 3, 3)),
    ('attn.channel_attention.cab.0.bias', (48, )),
    ('attn.channel_attention.cab.2.weight', (192, 48, 3, 3)),
    ('attn.channel_attention.cab.2.bias', (192, )),
    ('attn.channel_attention.cab.3.attention.1.weight', (6, 192, 1, 1)),
    ('attn.channel_attention.cab.3.attention.1.bias', (6, )),
    ('attn.channel_attention.cab.3.attention.3.weight', (192, 6, 1, 1)),
    ('attn.channel_attention.cab.3.attention.3.bias', (192, )),
    ('norm2.body.weight', (192, )),
    ('norm2.body.bias', (192, )),
    ('ffn.project_in.weight', (1020, 192, 1, 1)),
    ('ffn.project_in.bias', (1020, )),
    ('ffn.dwconv.weight', (1020, 1, 3, 3)),
    ('ffn.dwconv.bias', (1020, )),
    ('ffn.project_out.weight', (192, 510, 1, 1)),
    ('ffn.project_out.bias', (192, )),
]
MMA_B_X2 = ([('conv_first.weight', (192, 3, 3, 3)), ('conv_first.bias', (192, ))] +
            [(f'body.{i}.{k}', s) for i in range(24) for k, s in MMA_B_BLOCK] +
            [('conv_after_body.weight', (192, 192, 3, 3)), ('conv_after_body.bias', (192, )),
             ('upsample.0.weight', (768, 192, 3, 3)), ('upsample.0.bias', (768, )),
             ('conv_last.weight', (3, 192, 3, 3)), ('conv_last.bias', (3, ))])
PARAMS = {
    'MMA_B': {2: 19_824_627, 3: 21_484_467, 4: 21_152_499},
    'MMA_T': {2: 795_735, 3: 899_655, 4: 878_871},
}
# network_g of ArsenalCheng/MMA options/train/MMA/train_MMA_x2_finetune.yml
OFFICIAL_OPT_X2 = dict(num_in_ch=3, num_out_ch=3, num_feat=192, num_block=24, upscale=2, img_range=1.,
                       rgb_mean=[0.4488, 0.4371, 0.4040])


def _small(upscale=2, **kwargs):
    cfg = dict(num_feat=30, num_block=2, upscale=upscale, img_range=1.)  # 30: keeps the SE hidden (C // 30) at 1
    cfg.update(kwargs)
    return MMA(**cfg)


def test_state_dict_equals_official_layout_mma_b_x2():
    with torch.device('meta'):
        net = ARCH_REGISTRY.get('MMA')(**OFFICIAL_OPT_X2)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == MMA_B_X2
    assert 'mean' not in net.state_dict()


@pytest.mark.parametrize('preset', ['MMA_B', 'MMA_T'])
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_parameter_counts(preset, scale):
    with torch.device('meta'):
        net = ARCH_REGISTRY.get(preset)(upscale=scale)
    assert sum(p.numel() for p in net.parameters()) == PARAMS[preset][scale]


def test_presets():
    with torch.device('meta'):
        b, t = MMA_B(), MMA_T(upscale=4, use_checkpoint=True)
    assert len(b.body) == 24 and b.conv_first.out_channels == 192 and b.img_range == 1.
    assert len(t.body) == 12 and t.conv_first.out_channels == 48 and t.upscale == 4 and t.use_checkpoint


@pytest.mark.parametrize('preset', [MMA_B, MMA_T])
def test_preset_signatures_give_the_presets_defaults(preset):
    """help() and the option checks read a preset's signature: its defaults are what the preset builds."""
    defaults = {name: p.default for name, p in inspect.signature(preset).parameters.items()}
    with torch.device('meta'):
        built, spelled_out = preset(), MMA(**defaults)
    assert defaults['upscale'] == 2 and built.img_range == spelled_out.img_range
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [(k, v.shape)
                                                                      for k, v in spelled_out.state_dict().items()]


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_forward_odd_size(scale):
    torch.manual_seed(0)
    net = _small(scale).eval()
    x = torch.rand(1, 3, 17, 23)
    with torch.no_grad():
        y = net(x)
        feat = net.forward_features(x)
    assert y.shape == (1, 3, 17 * scale, 23 * scale)
    assert y.is_contiguous()  # the body runs channels_last; the output is contiguous, as before
    assert torch.isfinite(y).all()
    assert feat.shape == (1, 30, 17, 23)


def test_channels_last_body_computes_what_the_channels_first_one_does():
    """The body runs channels_last (no layout copies around its LayerNorms and Vim branch): the same function as
    the layers applied to a contiguous map, to float rounding."""
    torch.manual_seed(0)
    net = _small(2).eval()
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        feat = net.conv_first(((x - net.mean) * net.img_range).contiguous())  # channels first
        body = feat
        for block in net.body:
            body = block(body.contiguous())
        ref = net.conv_last(net.upsample(net.conv_after_body(body.contiguous()) + feat)) / net.img_range + net.mean
        assert torch.allclose(net(x), ref, atol=1e-5)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    net = _small(3).train()
    with torch.no_grad():  # one SE hidden unit: keep its ReLU alive so its weights get a gradient
        for blk in net.body:
            blk.attn.channel_attention.cab[3].attention[1].bias.fill_(1.)
    net(torch.rand(2, 3, 9, 11)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing


def test_use_checkpoint_gives_same_gradients():
    torch.manual_seed(0)
    net = _small(2).train()
    ckpt = _small(2, use_checkpoint=True).train()
    ckpt.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 8, 9)
    net(x).sum().backward()
    ckpt(x).sum().backward()
    for (name, p), q in zip(net.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_state_dict_round_trip_strict():
    torch.manual_seed(0)
    net = _small(4).eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other = _small(4).eval()
    other.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = torch.rand(1, 3, 5, 7)
    with torch.no_grad():
        assert torch.equal(net(x), other(x))


def test_vim_branch_sees_the_future_through_the_backward_scan():
    """First token's output depends on the last token's input: fails if the reverse branch is dropped.

    Tested on the Vim branch alone; the channel-attention branch's global pooling would mix positions anyway.
    """
    torch.manual_seed(0)
    vim = _small().body[0].attn.mamba.eval()
    x = torch.randn(1, 30, 2, 3)  # short: Vim's default-init dt_proj_b makes the backward scan forget fast
    x2 = x.clone()
    x2[..., -1, -1] += 1.
    with torch.no_grad():
        a, b = vim(x), vim(x2)
    assert (a[..., 0, 0] - b[..., 0, 0]).abs().max() > 1e-4


def test_backward_scan_is_exact_reverse_and_summed_without_halving():
    """With both branches' weights copied into two unidirectional mixers, v2 must equal
    fwd(x) + flip(bwd(flip(x))): the backward scan runs over the exact reverse, outputs are summed, not halved."""
    torch.manual_seed(0)
    bi = Mamba(16, bimamba_type='v2').eval()
    fwd, bwd = Mamba(16).eval(), Mamba(16).eval()
    sd = bi.state_dict()
    fwd.load_state_dict({k: v for k, v in sd.items() if '_b' not in k})
    bwd.load_state_dict({k.replace('_b_log', '_log').replace('_b', ''): v for k, v in sd.items()
                         if '_b' in k or k.startswith(('in_proj', 'out_proj'))})
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(bi(x), fwd(x) + bwd(x.flip(1)).flip(1), rtol=1e-4, atol=1e-6)


def test_backward_branch_init_as_vim():
    """Vim v2 inits A_b_log / D_b like A_log / D; dt_proj_b keeps nn.Linear's default (no inverse-softplus bias)."""
    torch.manual_seed(0)
    m = Mamba(32, bimamba_type='v2')
    assert torch.equal(m.A_b_log, m.A_log) and torch.equal(m.D_b, torch.ones(64))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert m.dt_proj_b.bias.abs().max() <= m.dt_rank**-0.5


@pytest.mark.cuda
def test_cuda_kernels_match_torch_path():
    from dvmsr_mma.ops import force_torch_ops
    torch.manual_seed(0)
    net = MMA_T(upscale=2).cuda().eval()
    x = torch.rand(1, 3, 17, 23, device='cuda')
    with torch.no_grad():
        y_kernel = net(x)
        with force_torch_ops():
            y_torch = net(x)
    torch.testing.assert_close(y_kernel, y_torch, rtol=1e-3, atol=1e-4)
