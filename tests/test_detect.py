"""Checkpoints that describe themselves (``dvmsr_mma.tools.detect``): every arch / preset x scale at random sizes is
rebuilt from its tensor shapes alone, ``--arch`` / ``--scale`` that disagree are one line, and ``basicsr infer``,
``export``, ``bench`` and ``lam`` run from ``--weights`` without ``--arch``."""
import json
import os
import random

import cv2
import numpy as np
import pytest
import torch

import dvmsr_mma  # noqa: F401
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mma_arch import MMA, MMA_B, MMA_T
from dvmsr_mma.cli import main as cli_main
from dvmsr_mma.tools.detect import detect
from dvmsr_mma.tools.infer import load_network
from dvmsr_mma.utils.errors import OptionError


def random_dvmsr(rng, scale):
    return DVMSR(embed_dim=rng.choice([6, 8, 12]), depths=[rng.randint(1, 2) for _ in range(rng.randint(1, 3))],
                 upscale=scale, d_state=rng.choice([4, 8, 16]), expand=rng.choice([1, 2]),
                 d_conv=rng.choice([2, 4]), upsampler=rng.choice(['pixelshuffledirect', 'pixelshuffle']),
                 resi_connection=rng.choice(['1conv', '3conv']), bimamba_type=rng.choice(['none', 'v2']))


# the registered networks: random sizes where they take any (MMA's channel attention squeezes by 30), the presets'
NETWORKS = {'DVMSR': random_dvmsr,
            'MMA': lambda rng, s: MMA(num_feat=rng.choice([30, 60]), num_block=rng.randint(1, 3), upscale=s,
                                      img_range=1.),
            'MMA_T': lambda rng, s: MMA_T(upscale=s), 'MMA_B': lambda rng, s: MMA_B(upscale=s)}


def randomized(net):
    with torch.no_grad():
        for p in net.state_dict().values():
            p.copy_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('arch', list(NETWORKS))
def test_every_arch_and_scale_is_rebuilt_from_its_shapes(arch, scale, tmp_path):
    rng = random.Random(f'{arch}{scale}')
    torch.manual_seed(scale)
    net = randomized(NETWORKS[arch](rng, scale))
    path = str(tmp_path / 'w.pth')
    torch.save({'params_ema': net.state_dict()}, path)
    found = detect(net.state_dict())
    assert (found.arch, found.scale) == ('DVMSR' if arch == 'DVMSR' else 'MMA', scale)
    built, got_scale = load_network(None, weights=path)  # what --weights alone builds
    assert type(built) is type(net) and got_scale == scale
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    x = torch.rand(1, 3, 5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(built(x), net(x))
    # --arch naming what the checkpoint holds is accepted (a preset only at its own sizes)
    assert type(load_network(arch, scale, path)[0]) is type(net)


def test_disagreeing_arch_or_scale_is_one_line(tmp_path):
    torch.manual_seed(0)
    dvmsr, mma = DVMSR(embed_dim=8, depths=[1], upscale=2), MMA(num_feat=30, num_block=1, upscale=3)
    for name, net in (('d.pth', dvmsr), ('m.pth', mma)):
        torch.save({'params': net.state_dict()}, tmp_path / name)
    d, m = str(tmp_path / 'd.pth'), str(tmp_path / 'm.pth')
    cases = {('MMA', None, d): f'--arch MMA: {d} holds DVMSR x2 (8nf, 1rssb, 1vimm); drop --arch',
             ('MMA_T', None, m): f'--arch MMA_T (48 features, 12 blocks): {m} holds MMA x3 (30nf, 1nb); drop --arch',
             ('DVMSR', None, m): f'--arch DVMSR: {m} holds MMA x3 (30nf, 1nb); drop --arch',
             (None, 4, d): f'--scale 4: {d} holds DVMSR x2 (8nf, 1rssb, 1vimm), which upscales x2; drop --scale'}
    for (arch, scale, path), start in cases.items():
        with pytest.raises(OptionError) as err:
            load_network(arch, scale, path)
        assert str(err.value).startswith(start) and '\n' not in str(err.value)


def test_a_checkpoint_of_another_network_needs_arch(tmp_path):
    torch.save({'params': {'conv.weight': torch.zeros(4, 3, 3, 3)}}, tmp_path / 'x.pth')
    with pytest.raises(OptionError, match=r'^--weights: cannot tell the network of .*x.pth from its tensors'):
        load_network(None, weights=str(tmp_path / 'x.pth'))


def test_commands_run_from_the_weights_alone(tmp_path, capsys):
    torch.manual_seed(0)
    net = randomized(DVMSR(embed_dim=10, depths=[1], upscale=3, d_state=8))
    weights = str(tmp_path / 'w.pth')
    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, weights)
    img = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    assert cli_main(['infer', '--weights', weights, '-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out'),
                     '--device', 'cpu', '--quiet']) == 0
    assert cv2.imread(str(tmp_path / 'out' / 'a_x3.png')).shape == (27, 33, 3)
    capsys.readouterr()
    assert cli_main(['export', '--weights', weights, '--onnx', str(tmp_path / 'm.onnx'), '--size', '8x8']) == 0
    assert 'DVMSR x3, 8x8 LR input' in capsys.readouterr().out and os.path.isfile(tmp_path / 'm.onnx')
    assert cli_main(['bench', '--weights', weights, '--size', '8x8', '--runs', '1', '--warmup', '0', '--no-flops',
                     '--device', 'cpu', '--json']) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record['arch'], record['scale'], record['params']) == ('DVMSR', 3, sum(p.numel() for p in net.parameters()))
    assert cli_main(['lam', '--weights', weights, '-i', str(tmp_path / 'a.png'), '--window', '0,0', '--window-size',
                     '3', '--fold', '2', '--device', 'cpu', '-o', str(tmp_path / 'lam'), '--quiet']) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])['network'] == 'DVMSR'
    assert cli_main(['infer', '-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out')]) == 2
    assert capsys.readouterr().err.startswith('basicsr infer: error: give --weights FILE')
