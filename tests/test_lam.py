"""LAM and the diffusion index (dvmsr_mma/tools/lam.py, ``basicsr lam``): Gini on hand-made maps, the blur path, the
window target, attribution confined to a 3x3 receptive field, a global-average network, determinism and batching,
every registered SR arch at a small size, the command's outputs and its bad inputs."""
import json
import os
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

import dvmsr_mma  # noqa: F401
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.cli import main as cli_main
from dvmsr_mma.tools import lam
from dvmsr_mma.utils.errors import OptionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def texture(h, w, seed=0):
    """(3, h, w) float32 noise in [0, 1]: every pixel differs, so the path derivative is non-zero almost
    everywhere."""
    return np.random.default_rng(seed).random((3, h, w), dtype=np.float32)


def pairwise_gini(values):
    """Independent form of the demo's Gini: mean absolute difference over all ordered pairs / (2 x mean), on the
    values shifted as the demo shifts them."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = (x - min(x.min(), 0)) + 1e-7
    return np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size ** 2 * x.mean())


# --- Gini and DI on hand-made maps -----------------------------------------------------------------------------

@pytest.mark.parametrize('value', [1.0, 0.3, 1e-4])
def test_uniform_map_has_di_100(value):
    assert lam.diffusion_index(np.full((32, 40), value)) == pytest.approx(100.0, abs=1e-9)


def test_one_hot_map_has_di_near_0():
    one_hot = np.zeros((64, 64))
    one_hot[10, 20] = 1.0
    di = lam.diffusion_index(one_hot)
    # with e = 1e-7 added to every value: Gini = (n - 1) / (n (1 + n e)), so DI = 100 (n^2 e + 1) / (n (1 + n e)),
    # 100 / n without the e
    n, e = one_hot.size, 1e-7
    assert di == pytest.approx(100 * (n * n * e + 1) / (n * (1 + n * e)), rel=1e-9)
    assert di < 0.1


@pytest.mark.parametrize('values, expected', [
    ([0, 1], 1 / (2 + 4e-7)),              # sum (2i - n - 1) x_i = 1; n sum x = 2 (1 + 2e-7)
    ([1, 0], 1 / (2 + 4e-7)),              # order does not matter
    ([-1, 0], 1 / (2 + 4e-7)),             # negative values are shifted by the minimum first
    ([0, 0, 0, 1], 0.75 / (1 + 4e-7)),     # 3 / (4 (1 + 4e-7))
    ([1, 2, 3, 4], 0.25 / (1 + 4e-8)),     # 10 / (4 (10 + 4e-7))
    ([[2, 2], [2, 2]], 0.0),               # 2-D maps are flattened
])
def test_gini_small_cases_exactly(values, expected):
    assert lam.gini(np.array(values, dtype=np.float64)) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_gini_equals_the_pairwise_form_on_random_maps():
    rng = np.random.default_rng(3)
    for shape in [(5,), (7, 9), (16, 16)]:
        values = rng.random(shape) ** 3
        assert lam.gini(values) == pytest.approx(pairwise_gini(values), rel=1e-10)
    signed = rng.standard_normal(50)
    assert lam.gini(signed) == pytest.approx(pairwise_gini(signed), rel=1e-10)


# --- the blur path and the target -------------------------------------------------------------------------------

def test_path_endpoints_are_the_blurred_and_the_original_image():
    img, sigma, fold, size = texture(13, 11), 1.2, 5, 9
    kernels = lam.path_kernels(sigma, fold, size)
    assert kernels.shape == (fold + 1, size, size)
    reference = cv2.GaussianBlur(np.ascontiguousarray(img.transpose(1, 2, 0)), (size, size), sigma + lam.SIGMA_EPS,
                                 borderType=cv2.BORDER_REFLECT_101).transpose(2, 0, 1)
    np.testing.assert_allclose(lam.blur(img, kernels[0]), reference, atol=1e-6)  # step 0: the baseline
    images, derivatives = lam.blur_path(img, kernels, range(1, fold + 1))
    assert np.array_equal(images[-1], img)  # last step: sigma 0 is an exact delta
    step1 = cv2.GaussianBlur(np.ascontiguousarray(img.transpose(1, 2, 0)), (size, size),
                             sigma * (1 - 1 / fold) + lam.SIGMA_EPS, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(images[0], step1.transpose(2, 0, 1), atol=1e-6)  # sigma falls linearly
    # the derivatives are fold x the differences of consecutive steps, so their mean telescopes to image - baseline
    np.testing.assert_allclose(derivatives.mean(0), img - reference, atol=1e-5)
    with pytest.raises(ValueError):
        lam.blur_path(img, kernels, [0])  # the baseline gets no gradient


def test_window_target_is_the_sum_of_gradient_magnitudes():
    out = torch.from_numpy(texture(12, 14)[None].repeat(2, 0))
    full = out.numpy()
    dy = full[:, :, :-1, :-1] - full[:, :, 1:, :-1]
    dx = full[:, :, :-1, :-1] - full[:, :, :-1, 1:]
    magnitude = np.sqrt(dy ** 2 + dx ** 2)  # (2, 3, 11, 13): the gradient map is one pixel smaller
    for row, col, size in [(0, 0, 4), (3, 5, 6), (7, 9, 4)]:  # the last one ends at the map's last row and column
        expected = magnitude[:, :, row:row + size, col:col + size].sum()
        assert lam.window_gradient_sum(out, row, col, size).item() == pytest.approx(expected, rel=1e-5)


# --- attribution of networks with a known receptive field ------------------------------------------------------

class LocalNet(nn.Module):
    """One 3x3 conv + PixelShuffle: HR pixel (y, x) depends only on the 3x3 LR pixels around (y // s, x // s)."""

    def __init__(self, scale=2):
        super().__init__()
        torch.manual_seed(0)
        self.upscale = scale
        self.conv, self.shuffle = nn.Conv2d(3, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.conv(x))


class GlobalAverageNet(nn.Module):
    """Output = per-channel mean of the whole input x a fixed HR pattern: every input pixel has the same gradient."""

    def __init__(self, scale=2, size=64):
        super().__init__()
        self.upscale = scale
        self.register_buffer('pattern', torch.from_numpy(texture(size, size, seed=5)))

    def forward(self, x):
        h, w = x.shape[2] * self.upscale, x.shape[3] * self.upscale
        return x.mean(dim=(2, 3), keepdim=True) * self.pattern[:, :h, :w]


def checkerboard(h, w):
    """(3, h, w) 0.25 / 0.75 checkerboard: every blur keeps it a checkerboard (reflect-101 borders too), so the
    path derivative has the same magnitude at every pixel and any non-uniformity of the map is the network's."""
    board = np.where((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0, 0.25, 0.75).astype(np.float32)
    return np.repeat(board[None], 3, axis=0)


def test_3x3_receptive_field_attributes_only_inside_window_plus_one_pixel():
    scale, row, col, size = 2, 10, 12, 6
    result = lam.local_attribution_map(LocalNet(scale), texture(16, 16), (row, col), scale, window_size=size, fold=4,
                                       batch=2)
    # the target reads HR rows row..row+size (differences need the next row) -> LR rows row//s..(row+size)//s
    r0, r1, c0, c1 = row // scale - 1, (row + size) // scale + 1, col // scale - 1, (col + size) // scale + 1
    inside = np.zeros_like(result.attribution, dtype=bool)
    inside[r0:r1 + 1, c0:c1 + 1] = True
    assert np.all(result.attribution[~inside] == 0)
    for edge in (result.attribution[r0, c0:c1 + 1], result.attribution[r1, c0:c1 + 1],
                 result.attribution[r0:r1 + 1, c0], result.attribution[r0:r1 + 1, c1]):
        assert edge.max() > 0  # the one-pixel ring is reached: the bound is tight
    assert result.attribution.max() == 1.0
    assert result.di < 20


def test_global_average_network_has_di_near_100():
    img = checkerboard(16, 16)
    spread = lam.local_attribution_map(GlobalAverageNet(), img, (8, 6), 2, window_size=8, fold=4, batch=4)
    assert spread.di > 99.9
    local = lam.local_attribution_map(LocalNet(), img, (8, 6), 2, window_size=8, fold=4, batch=4)
    assert local.di < 30  # the same image through a 3x3 network: the DI is the network's, not the image's


def tiny_dvmsr(scale=2):
    torch.manual_seed(0)
    return DVMSR(embed_dim=8, depths=[1], upscale=scale)


def test_map_is_deterministic_and_independent_of_the_batch():
    net, img = tiny_dvmsr(), texture(12, 12)
    first = lam.local_attribution_map(net, img, (4, 6), 2, window_size=8, fold=6, batch=3)
    second = lam.local_attribution_map(net, img, (4, 6), 2, window_size=8, fold=6, batch=3)
    assert np.array_equal(first.attribution, second.attribution) and first.di == second.di
    one_by_one = lam.local_attribution_map(net, img, (4, 6), 2, window_size=8, fold=6, batch=1)
    np.testing.assert_allclose(one_by_one.gradient, first.gradient, rtol=1e-4, atol=1e-6 * np.abs(first.gradient).max())
    sr = net.eval()(torch.from_numpy(img)[None])[0].detach().numpy()
    np.testing.assert_allclose(first.sr, sr, atol=1e-5)  # the SR image is the output for the image itself


def test_network_mode_restored_and_parameter_grads_untouched():
    net = tiny_dvmsr().train()
    lam.local_attribution_map(net, texture(8, 8), (2, 2), 2, window_size=4, fold=2, batch=2)
    assert net.training
    assert all(p.grad is None for p in net.parameters())


def test_zero_map_and_out_of_memory_are_one_line_errors():
    class IgnoresInput(nn.Module):
        def forward(self, x):  # a fixed HR pattern: the input gradient is exactly 0
            return x.repeat_interleave(2, 2).repeat_interleave(2, 3) * 0 + torch.arange(16.).view(1, 1, 1, 16)

    with pytest.raises(OptionError, match='is zero everywhere'):
        lam.local_attribution_map(IgnoresInput(), texture(8, 8), (2, 2), 2, window_size=4, fold=2)

    class OutOfMemory(nn.Module):
        def forward(self, x):
            raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')

    with pytest.raises(OptionError, match=r'running 10 path steps at once on a 8x8 LR image; pass a smaller '
                                          r'--batch \(e.g. --batch 5\)'):
        lam.local_attribution_map(OutOfMemory(), texture(8, 8), (2, 2), 2, window_size=4, fold=20, batch=10)


# --- every registered arch ----------------------------------------------------------------------------------------

SMALL_SR_ARCHS = {  # registry name -> (tiny constructor arguments, scale)
    'DVMSR': (dict(embed_dim=8, depths=[1], upscale=2), 2),
    'MMA': (dict(num_feat=30, num_block=1, upscale=2, img_range=1.), 2),  # 30: channel attention keeps C // 30 = 1
    'MMA_B': (dict(num_feat=30, num_block=1), 2),
    'MMA_T': (dict(num_feat=30, num_block=1), 2),
    'EDSR': (dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2), 2),
    'RCAN': (dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2), 2),
    'SwinIR': (dict(img_size=8, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2, upscale=2,
                    upsampler='pixelshuffledirect'), 2),
    'RRDBNet': (dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=1, num_grow_ch=4), 2),
    'MSRResNet': (dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2), 2),
    'SRVGGNetCompact_basicsr': (dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2), 2),
    'ECBSR': (dict(num_in_ch=3, num_out_ch=3, num_block=1, num_channel=8, with_idt=False, act_type='prelu',
                   scale=2), 2),
    'RIDNet': (dict(in_channels=3, mid_channels=16, out_channels=3, num_block=1), 1),  # denoiser: same size out
}
NOT_SINGLE_IMAGE_SR = {  # what LAM of one LR image cannot apply to, and why
    **dict.fromkeys(['BasicVSR', 'BasicVSRPlusPlus', 'IconVSR', 'EDVR', 'DUF', 'TOFlow'], 'video: (b, t, c, h, w) in'),
    'SpyNet': 'optical flow between two frames',
    'DFDNet': 'face restoration from an external component dictionary',
    'HiFaceGAN': 'face restoration generator at a fixed crop size',
    'StyleGAN2Generator': 'generates from a latent vector',
    **dict.fromkeys(['HiFaceGANDiscriminator', 'StyleGAN2Discriminator', 'UNetDiscriminatorSN_basicsr',
                     'VGGStyleDiscriminator', 'VGGFeatureExtractor'], 'discriminator / feature extractor'),
}


def test_every_registered_arch_is_classified():
    """A newly registered network must be added to one of the two lists (and so be run below)."""
    unknown = set(ARCH_REGISTRY._obj_map) - set(SMALL_SR_ARCHS) - set(NOT_SINGLE_IMAGE_SR)
    assert not unknown, f'add {sorted(unknown)} to SMALL_SR_ARCHS or NOT_SINGLE_IMAGE_SR'


@pytest.mark.parametrize('arch', sorted(SMALL_SR_ARCHS))
def test_every_registered_sr_arch_runs(arch):
    kwargs, scale = SMALL_SR_ARCHS[arch]
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(arch)(**kwargs)
    result = lam.local_attribution_map(net, texture(8, 8), (2, 3), scale, window_size=4, fold=2, batch=2)
    assert result.attribution.shape == (8, 8) and np.isfinite(result.attribution).all()
    assert result.attribution.max() == 1.0 and 0 < result.di <= 100
    assert result.sr.shape == (3, 8 * scale, 8 * scale)


# --- drawing --------------------------------------------------------------------------------------------------------

def test_picture_blends_map_and_lr_and_marks_the_window():
    lr = (texture(6, 5).transpose(1, 2, 0) * 255).astype(np.uint8)
    attribution = np.zeros((6, 5))
    attribution[4, 1] = 1.0
    only_lr = lam.render_map(attribution, lr, 4, (4, 4), 8, alpha=1.0)
    assert only_lr.shape == (24, 20, 3) and only_lr.dtype == np.uint8
    assert np.all(only_lr[4, 4:13] == (255, 0, 0))  # the window's top edge, red
    only_map = lam.render_map(attribution, lr, 4, (4, 4), 8, alpha=0.0)
    assert np.all(only_map[16:20, 4:8] == (127, 0, 0))  # the top of 'seismic': dark red, 4x4 per LR pixel
    assert np.all(only_map[20:, :] >= 253)  # no attribution: (nearly) white


# --- the command ------------------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_setup(tmp_path):
    """A tiny DVMSR x2 checkpoint, an option file pointing at it, and a 26x30 HR image (cropped to 26x30 by x2)."""
    weights = tmp_path / 'tiny.pth'
    torch.save({'params': tiny_dvmsr().state_dict()}, weights)
    opt = tmp_path / 'tiny.yml'
    opt.write_text(yaml.safe_dump({'scale': 2, 'network_g': {'type': 'DVMSR', 'embed_dim': 8, 'depths': [1],
                                                             'upscale': 2},
                                   'path': {'pretrain_network_g': str(weights)}}))
    image = tmp_path / 'photo.png'
    cv2.imwrite(str(image), cv2.resize((texture(7, 8).transpose(1, 2, 0) * 255).astype(np.uint8), (31, 27),
                                       interpolation=cv2.INTER_CUBIC))
    return {'weights': str(weights), 'opt': str(opt), 'image': str(image), 'out': str(tmp_path / 'out')}


def test_command_writes_map_sr_and_json(tiny_setup, capsys):
    s = tiny_setup
    rc = cli_main(['lam', '-opt', s['opt'], '-i', s['image'], '--window', '6,8', '--window-size', '8', '--fold', '4',
                   '--batch', '3', '--device', 'cpu', '-o', s['out'], '--quiet'])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    record = json.loads(out[0])
    assert out[1].startswith(f'DI {record["di"]:.2f}')
    assert record['window'] == [6, 8] and record['window_size'] == 8 and record['fold'] == 4
    assert record['sigma'] == 1.2 and record['kernel_size'] == 9 and record['lr'].startswith('PIL bicubic')
    assert record['hr_size'] == [26, 30] and record['lr_size'] == [13, 15]
    with open(os.path.join(s['out'], 'photo_lam.json'), encoding='utf-8') as f:
        assert json.loads(f.read()) == record
    assert cv2.imread(os.path.join(s['out'], 'photo_lam.png')).shape == (26, 30, 3)
    assert cv2.imread(os.path.join(s['out'], 'photo_sr.png')).shape == (26, 30, 3)
    # the same through the Python API, weights loaded the same way
    net, scale = lam.load_network(s['opt'])
    result, _ = lam.attribution_of_image(net, scale, lam.read_hr(s['image']), (6, 8), window_size=8, fold=4)
    assert record['di'] == pytest.approx(result.di, abs=1e-4)


def test_command_matlab_lr_is_labelled(tiny_setup, capsys):
    s = tiny_setup
    assert cli_main(['lam', '--arch', 'MMA', '--weights', s['weights'], '-i', s['image'], '--window', '2,2',
                     '--window-size', '8', '--fold', '2', '--lr', 'matlab', '--device', 'cpu', '-o', s['out'],
                     '--quiet']) == 2  # the checkpoint holds a DVMSR, not the MMA --arch names: one line
    assert capsys.readouterr().err.count('\n') == 1
    assert cli_main(['lam', '-opt', s['opt'], '-i', s['image'], '--window', '2,2', '--window-size', '8',
                     '--fold', '2', '--lr', 'matlab', '--device', 'cpu', '-o', s['out'], '--quiet']) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record['lr'].startswith('MATLAB bicubic')
    hr, lr = lam.prepare_images(lam.read_hr(s['image']), 2, 'matlab')
    _, pil_lr = lam.prepare_images(lam.read_hr(s['image']), 2, 'pil')
    assert lr.shape == pil_lr.shape == (13, 15, 3) and not np.array_equal(lr, pil_lr)


@pytest.mark.parametrize('args, words', [
    (['--window', '20,8'], '--window 20,8: the 8x8 window is outside the 26x30 HR image'),
    (['--window=-1,0'], 'window is outside'),
    (['--window', '0,0', '--window-size', '26'], '--window-size 26 is larger than the image'),
    (['--window', '3;4'], "--window: expected ROW,COL"),
    (['--window', '3,4,5'], "--window: expected ROW,COL"),
    (['--window', '0,0', '-i', 'missing.png'], '-i: no such image file: missing.png'),
    (['--window', '0,0', '--kernel-size', '8'], '--kernel-size must be an odd number'),
    (['--window', '0,0', '--alpha', '2'], '--alpha must lie in [0, 1]'),
    (['--window', '0,0', '--batch', '0'], '--batch must be >= 1'),
])
def test_bad_inputs_are_one_line_exit_2(tiny_setup, args, words, capsys):
    s = tiny_setup
    base = ['lam', '-opt', s['opt'], '-i', s['image'], '--window-size', '8', '--fold', '2', '--device', 'cpu',
            '-o', s['out'], '--quiet']
    assert cli_main(base + args) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('basicsr lam: error: ') and words in err


def test_arch_without_weights_and_unreadable_image_are_one_line(tiny_setup, tmp_path, capsys):
    s = tiny_setup
    assert cli_main(['lam', '--arch', 'EDSR', '-i', s['image'], '--window', '0,0', '-o', s['out']]) == 2
    assert capsys.readouterr().err == 'basicsr lam: error: --arch needs --weights FILE\n'
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not a png')
    assert cli_main(['lam', '-opt', s['opt'], '-i', str(bad), '--window', '0,0', '-o', s['out']]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'not a readable image' in err


def test_di_table_example_runs(tiny_setup, tmp_path, monkeypatch, capsys):
    s = tiny_setup
    monkeypatch.setattr(sys, 'argv', ['lam_di_table.py', '-opt', s['opt'], f'{s["image"]}@4,6', s['image'],
                                      '--window-size', '8', '--fold', '2', '--device', 'cpu',
                                      '-o', str(tmp_path / 'maps')])
    runpy.run_path(os.path.join(REPO, 'benchmarks', 'lam_di_table.py'), run_name='__main__')
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith('|')]
    assert table[0] == '| image | window (row,col) | tiny DI | bicubic conv DI |'
    assert table[2].startswith('| photo.png | 4,6 |') and table[3].startswith('| photo.png | 8,10 |')
    assert len(os.listdir(tmp_path / 'maps')) == 2  # one map per network (the two rows share the image name)
