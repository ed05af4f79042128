"""SRInferencer and ``basicsr infer``: image kinds x scales with a tiny DVMSR, tiling, bad files, strict loading."""
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

import dvmsr_mma  # noqa: F401
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.cli import main as cli_main
from dvmsr_mma.infer import SRInferencer


def tiny_dvmsr(scale):
    torch.manual_seed(0)
    return DVMSR(embed_dim=8, depths=[1], upscale=scale)


def make_image(kind, h=10, w=12):
    rng = np.random.default_rng(0)
    if kind == 'rgb':
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == 'gray':
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == 'rgba':
        return rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    return rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)  # 'rgb16'


@pytest.mark.parametrize('scale', [2, 4])
@pytest.mark.parametrize('kind, alpha', [('rgb', 'network'), ('gray', 'network'), ('rgba', 'network'),
                                         ('rgba', 'bicubic'), ('rgb16', 'network')])  # alpha mode matters for rgba
def test_enhance_kinds(scale, kind, alpha):
    img = make_image(kind)
    out = SRInferencer(tiny_dvmsr(scale), scale=scale, device='cpu', alpha=alpha).enhance(img)
    assert out.dtype == img.dtype
    assert out.shape == (img.shape[0] * scale, img.shape[1] * scale) + img.shape[2:]
    if kind == 'rgb16':
        assert out.max() > 255  # really 16-bit, not 8-bit scaled


def test_tiled_equals_untiled_conv_net():
    torch.manual_seed(0)
    # 6 3x3 convs: receptive radius 6 LR pixels <= tile_pad, so tiles see all the context they need
    net = SRVGGNetCompact(num_feat=8, num_conv=4, upscale=2)
    img = make_image('rgb', 40, 37)
    whole = SRInferencer(net, scale=2, device='cpu').run(torch.from_numpy(img).permute(2, 0, 1)[None] / 255.)
    tiled = SRInferencer(net, scale=2, tile=16, tile_pad=8, device='cpu').run(
        torch.from_numpy(img).permute(2, 0, 1)[None] / 255.)
    assert (whole - tiled).abs().max().item() < 1e-3


def test_tiled_mamba_runs_and_stays_close():
    """A Mamba scan sees the whole padded tile, so tiled output is close, not equal (see dvmsr_mma.infer)."""
    img = make_image('rgb', 20, 20)
    x = torch.from_numpy(img).permute(2, 0, 1)[None] / 255.
    net = tiny_dvmsr(2)
    whole = SRInferencer(net, scale=2, device='cpu').run(x)
    tiled = SRInferencer(net, scale=2, tile=10, tile_pad=6, device='cpu').run(x)
    assert tiled.shape == whole.shape
    assert (whole - tiled).abs().mean().item() < 0.05


@pytest.fixture
def tiny_setup(tmp_path):
    net = tiny_dvmsr(2)
    weights = tmp_path / 'tiny.pth'
    torch.save({'params_ema': {f'module.{k}': v for k, v in net.state_dict().items()}}, weights)
    opt = tmp_path / 'tiny.yml'
    opt.write_text(yaml.safe_dump({'scale': 2, 'network_g': {'type': 'DVMSR', 'embed_dim': 8, 'depths': [1],
                                                             'upscale': 2},
                                   'path': {'pretrain_network_g': str(weights)}}))
    return net, weights, opt


def test_cli_reports_bad_files_and_processes_the_rest(tiny_setup, tmp_path, capsys):
    _, _, opt = tiny_setup
    src, dst = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    cv2.imwrite(str(src / 'a.png'), make_image('rgb'))
    cv2.imwrite(str(src / 'b16.tif'), make_image('rgb16'))
    (src / 'notes.txt').write_text('not an image')
    (src / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    rc = cli_main(['infer', '-opt', str(opt), '-i', str(src), '-o', str(dst), '--quiet'])
    err = capsys.readouterr().err
    assert rc != 0
    assert 'notes.txt' in err and 'corrupt.png' in err
    assert sorted(os.listdir(dst)) == ['a_x2.png', 'b16_x2.png']
    out16 = cv2.imread(str(dst / 'b16_x2.png'), cv2.IMREAD_UNCHANGED)
    assert out16.dtype == np.uint16 and out16.shape == (20, 24, 3)


def test_cli_arch_and_weights_single_file(tiny_setup, tmp_path):
    net, weights, _ = tiny_setup
    img = tmp_path / 'g.png'
    cv2.imwrite(str(img), make_image('gray'))
    # --arch builds DVMSR with defaults: the tiny checkpoint must not fit (next test); -opt path is the fitting one
    rc = cli_main(['infer', '-opt', str(tiny_setup[2]), '--weights', str(weights), '-i', str(img), '-o',
                   str(tmp_path / 'o'), '--tile', '6', '--tile-pad', '4', '--quiet'])
    assert rc == 0
    assert cv2.imread(str(tmp_path / 'o' / 'g_x2.png'), cv2.IMREAD_UNCHANGED).shape == (20, 24)


def test_checkpoint_for_another_arch_is_one_line(tiny_setup, tmp_path, capsys):
    _, _, opt = tiny_setup
    other = tmp_path / 'srvgg.pth'
    torch.save({'params': SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict()}, other)
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), make_image('rgb'))
    rc = cli_main(['infer', '-opt', str(opt), '--weights', str(other), '-i', str(img), '-o', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count('\n') == 1
    assert 'missing' in err and 'unexpected' in err and 'body.0.weight' in err


def test_shape_mismatch_named(tmp_path):
    from dvmsr_mma.errors import OptionError
    from dvmsr_mma.weights import load_weights
    path = tmp_path / 'w.pth'
    torch.save(SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict(), path)
    with pytest.raises(OptionError, match='shape mismatches .*body.0.weight'):
        load_weights(SRVGGNetCompact(num_feat=4, num_conv=2, upscale=2), str(path))


def test_safetensors_optional(tmp_path):
    from dvmsr_mma.weights import load_weights
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)
    path = tmp_path / 'w.safetensors'
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b'')
        from dvmsr_mma.errors import OptionError
        with pytest.raises(OptionError, match='pip install safetensors'):
            load_weights(net, str(path))
        return
    save_file(net.state_dict(), str(path))
    load_weights(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2), str(path))
