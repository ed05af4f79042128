"""ONNX export (``dvmsr_mma.tools.export``, ``basicsr export``) checked in onnxruntime, and ``basicsr infer --onnx``.

Tiny networks at tiny sizes: one torch.export of a 1-block network at 8x8 takes about 5 s on 2 cores.
"""
import os
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs.srvgg_arch import SRVGGNetCompact

import dvmsr_mma  # noqa: F401
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mma_arch import MMA_T
from dvmsr_mma.cli import main as cli_main
from dvmsr_mma.ops import force_torch_ops
from dvmsr_mma.tools.infer import SRInferencer, tile_spans

ort = pytest.importorskip('onnxruntime')  # the [onnx] extra, which make test installs
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')
from dvmsr_mma.tools import export  # noqa: E402  (after the skips: it needs the extra)

TINY = {'DVMSR': lambda s: DVMSR(embed_dim=8, depths=[1], upscale=s),
        'MMA_T': lambda s: MMA_T(upscale=s, num_feat=30, num_block=1)}  # 30: MMA's channel attention squeezes by 30


def tiny(arch, scale):
    torch.manual_seed(0)
    return TINY[arch](scale).eval()


def ort_vs_torch(path, net, shape, seed=7):
    """max |onnxruntime - PyTorch| on a fresh input, independent of the export's own check."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
    with torch.no_grad(), force_torch_ops():
        return float(np.abs(out - net(x).numpy()).max())


def no_leftovers(folder):
    return [n for n in os.listdir(folder) if '.tmp' in n]


@pytest.fixture(scope='module')
def fixed_exports(tmp_path_factory):
    """``get(arch, scale)``: the tiny network, its 8x8 export and the export's result, made once per module."""
    made = {}

    def get(arch, scale):
        if (arch, scale) not in made:
            folder = tmp_path_factory.mktemp(f'fixed_{arch}_x{scale}')
            net = tiny(arch, scale)
            made[arch, scale] = net, folder / 'm.onnx', export.export_onnx(net, str(folder / 'm.onnx'), scale,
                                                                         size=(8, 8))
        return made[arch, scale]

    return get


@pytest.mark.parametrize('scale', [2, 4])
@pytest.mark.parametrize('arch', ['DVMSR', 'MMA_T'])
def test_export_runs_in_onnxruntime_within_tolerance(arch, scale, fixed_exports):
    net, path, result = fixed_exports(arch, scale)
    assert result.max_abs_diff is not None and result.max_abs_diff <= export.FP32_TOLERANCE
    assert f'max abs diff {result.max_abs_diff:.2e}' in result.summary()
    assert ort_vs_torch(path, net, (1, 3, 8, 8)) <= export.FP32_TOLERANCE
    runner = export.OnnxRunner(str(path))
    assert (runner.input_size, runner.scale) == ((8, 8), scale)
    assert no_leftovers(path.parent) == []


def test_fp16_export_takes_float16_and_stays_within_its_tolerance(tmp_path):
    net = tiny('DVMSR', 2)
    result = export.export_onnx(net, str(tmp_path / 'h.onnx'), 2, size=(8, 8), fp16=True)
    assert result.fp16 and result.max_abs_diff <= export.FP16_TOLERANCE == result.tolerance
    session = ort.InferenceSession(str(tmp_path / 'h.onnx'), providers=['CPUExecutionProvider'])
    assert session.get_inputs()[0].type == 'tensor(float16)'
    assert next(net.parameters()).dtype == torch.float32  # the caller's network is left as it was


def test_dynamic_export_of_a_conv_net_runs_at_other_sizes(tmp_path):
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).eval()
    path = tmp_path / 'd.onnx'
    result = export.export_onnx(net, str(path), 2, size=(8, 8), dynamic=True)
    assert result.size is None and result.max_abs_diff <= export.FP32_TOLERANCE
    assert ort_vs_torch(path, net, (1, 3, 13, 7)) <= export.FP32_TOLERANCE
    runner = export.OnnxRunner(str(path))
    assert runner.input_size is None and runner.scale == 2  # scale from the metadata: the shapes are symbolic
    x = torch.rand(1, 3, 20, 13, generator=torch.Generator().manual_seed(2))  # --tile as for PyTorch: same tiles
    tiled = SRInferencer(runner, tile=8, tile_pad=2).run(x)
    assert (tiled - SRInferencer(net, scale=2, tile=8, tile_pad=2, device='cpu').run(x)).abs().max() <= 1e-4


@pytest.fixture(scope='module')
def dynamic_dvmsr(exported):
    """The tiny DVMSR x2 exported with a dynamic input size by ``basicsr export --weights ... --dynamic`` (the
    network from the weights alone), and what the command printed."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(['export', '--weights', str(exported / 'w.pth'), '--onnx', str(exported / 'd.onnx'), '--size',
                       '8x8', '--dynamic'])
    assert rc == 0
    return exported / 'd.onnx', out.getvalue()


@pytest.mark.parametrize('arch', ['DVMSR', 'MMA_T'])
def test_dynamic_export_of_a_mamba_net_runs_at_any_size(arch, tmp_path, fixed_exports, dynamic_dvmsr):
    """The length-independent scan (dvmsr_mma.ops.scan_graph): one graph for one chunk of tokens (5x4), whole
    chunks (8x16) and several with a partial last one (17x23), with no more nodes than a fixed 8x8 export."""
    net, fixed, _ = fixed_exports(arch, 2)
    if arch == 'DVMSR':  # the same network as the command exported: its file, checked here from outside
        dynamic = dynamic_dvmsr[0]
    else:
        dynamic = tmp_path / 'd.onnx'
        result = export.export_onnx(net, str(dynamic), 2, size=(8, 8), dynamic=True)
        assert result.size is None and result.max_abs_diff <= export.FP32_TOLERANCE
    for shape in ((1, 3, 5, 4), (1, 3, 8, 16), (1, 3, 17, 23)):
        assert ort_vs_torch(dynamic, net, shape) <= export.FP32_TOLERANCE
    nodes = {name: len(onnx.load(str(path)).graph.node) for name, path in (('dynamic', dynamic), ('fixed', fixed))}
    assert nodes['dynamic'] <= nodes['fixed'], nodes


def test_dynamic_export_from_the_weights_alone_then_infer_without_tiles(exported, dynamic_dvmsr, tmp_path):
    path, printed = dynamic_dvmsr
    assert 'DVMSR x2, dynamic HxW input' in printed and 'max abs diff' in printed
    assert export.OnnxRunner(str(path)).input_size is None
    img = np.random.default_rng(3).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    src = str(tmp_path / 'a.png')
    assert cli_main(['infer', '--onnx', str(path), '-i', src, '-o', str(tmp_path / 'o1'),
                     '--quiet']) == 0
    assert cli_main(['infer', '--weights', str(exported / 'w.pth'), '-i', src, '-o', str(tmp_path / 'o2'), '--device',
                     'cpu', '--quiet']) == 0
    onnx_out, torch_out = (cv2.imread(str(tmp_path / o / 'a_x2.png')).astype(int) for o in ('o1', 'o2'))
    assert onnx_out.shape == (26, 42, 3) and np.abs(onnx_out - torch_out).max() <= 1  # the whole image, untiled


def test_check_failure_exits_1_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    weights = tmp_path / 'w.pth'
    torch.save({'params': SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict()}, weights)
    opt = tmp_path / 'o.yml'
    opt.write_text(yaml.safe_dump({'scale': 2, 'network_g': {'type': 'SRVGGNetCompact', 'num_feat': 8, 'num_conv': 2,
                                                             'upscale': 2}}))
    monkeypatch.setattr(export, 'FP32_TOLERANCE', -1.)  # any difference, even 0, is above it
    out = tmp_path / 'm.onnx'
    rc = cli_main(['export', '-opt', str(opt), '--weights', str(weights), '--onnx', str(out), '--size', '8x8'])
    err = capsys.readouterr().err
    assert rc == 1 and 'above the tolerance' in err and 'not written' in err
    assert not out.exists() and no_leftovers(tmp_path) == []


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A tiny DVMSR x2 checkpoint, its option file, and its 12x12 ONNX export made by the CLI."""
    folder = tmp_path_factory.mktemp('export')
    torch.save({'params_ema': tiny('DVMSR', 2).state_dict()}, folder / 'w.pth')
    opt = folder / 'o.yml'
    opt.write_text(yaml.safe_dump({'scale': 2, 'network_g': {'type': 'DVMSR', 'embed_dim': 8, 'depths': [1],
                                                             'upscale': 2},
                                   'path': {'pretrain_network_g': str(folder / 'w.pth')}}))
    rc = cli_main(['export', '-opt', str(opt), '--onnx', str(folder / 'm.onnx'), '--size', '12x12'])
    assert rc == 0
    return folder


def test_cli_export_prints_the_difference(exported, capsys):
    rc = cli_main(['export', '-opt', str(exported / 'o.yml'), '--onnx', str(exported / 'm.onnx'), '--size', '12x12',
                   '--no-check'])
    assert rc == 0 and 'not checked (--no-check)' in capsys.readouterr().out  # replaced in place, unchecked
    assert export.OnnxRunner(str(exported / 'm.onnx')).input_size == (12, 12)


def test_infer_onnx_equals_infer_pytorch_on_images_of_the_model_size(exported, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / 'in'
    src.mkdir()
    images = {'rgb': rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
              'gray': rng.integers(0, 256, (12, 12), dtype=np.uint8),
              'rgba': rng.integers(0, 256, (12, 12, 4), dtype=np.uint8),
              'rgb16': rng.integers(0, 65536, (12, 12, 3), dtype=np.uint16)}
    for name, img in images.items():
        cv2.imwrite(str(src / f'{name}.png'), img)
    assert cli_main(['infer', '--onnx', str(exported / 'm.onnx'), '-i', str(src), '-o', str(tmp_path / 'o1'),
                     '--tile-pad', '2', '--quiet']) == 0
    assert cli_main(['infer', '-opt', str(exported / 'o.yml'), '-i', str(src), '-o', str(tmp_path / 'o2'),
                     '--device', 'cpu', '--quiet']) == 0
    for name, img in images.items():
        a = cv2.imread(str(tmp_path / 'o1' / f'{name}_x2.png'), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / 'o2' / f'{name}_x2.png'), cv2.IMREAD_UNCHANGED)
        assert a.dtype == b.dtype == img.dtype and a.shape == b.shape == (24, 24) + img.shape[2:]
        peak = 65535 if img.dtype == np.uint16 else 255
        assert np.abs(a.astype(np.int64) - b).max() <= peak // 255  # within 1/255 of the range


def test_fixed_size_tiles_are_the_model_size_and_cover_the_image():
    for n, window, pad in ((30, 12, 2), (12, 12, 2), (13, 12, 5), (100, 64, 10)):
        spans = tile_spans(n, 0, pad, window)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # tiles meet exactly
        for start, end, lo, hi in spans:
            assert hi - lo == min(window, n) and 0 <= lo <= start < end <= hi <= n
    assert tile_spans(20, 8, 3) == [(0, 8, 0, 11), (8, 16, 5, 19), (16, 20, 13, 20)]  # Real-ESRGAN's, unchanged


def test_onnx_tiling_matches_the_network_on_the_same_tiles(exported):
    """A 30x20 image through the 12x12 model: each output tile is the network's on its 12x12 window."""
    x = torch.rand(1, 3, 30, 20, generator=torch.Generator().manual_seed(3))
    got = SRInferencer(str(exported / 'm.onnx'), tile_pad=2).run(x)
    net = tiny('DVMSR', 2)
    want = torch.zeros(1, 3, 60, 40)
    with torch.no_grad(), force_torch_ops():
        for y0, y1, py0, py1 in tile_spans(30, 0, 2, 12):
            for x0, x1, px0, px1 in tile_spans(20, 0, 2, 12):
                sr = net(x[:, :, py0:py1, px0:px1])
                want[:, :, 2 * y0:2 * y1, 2 * x0:2 * x1] = sr[:, :, 2 * (y0 - py0):2 * (y1 - py0),
                                                              2 * (x0 - px0):2 * (x1 - px0)]
    assert (got - want).abs().max().item() <= export.FP32_TOLERANCE
    small = SRInferencer(str(exported / 'm.onnx'), tile_pad=2).run(x[:, :, :7, :5])  # padded to 12x12, cropped
    assert small.shape == (1, 3, 14, 10)


@pytest.mark.parametrize('argv, message', [
    (['--arch', 'NoSuchNet', '--weights', '{dir}/w.pth', '--onnx', '{tmp}/m.onnx'], 'w.pth holds DVMSR x2 (8nf'),
    (['--arch', 'NoSuchNet', '--weights', '{dir}/o.yml', '--onnx', '{tmp}/m.onnx'], 'not a readable PyTorch'),
    (['-opt', '{dir}/o.yml', '--onnx', '{tmp}/m.onnx', '--size', '0x8'], '--size: expected HxW'),
    (['-opt', '{dir}/o.yml', '--onnx', '{tmp}/m.txt', '--size', '8x8'], 'must end in .onnx'),
    (['-opt', '{dir}/o.yml', '--onnx', '{tmp}/missing/m.onnx', '--size', '8x8'], '--onnx: no such folder'),
])
def test_export_bad_input_is_one_line(argv, message, exported, tmp_path, capsys):
    rc = cli_main(['export'] + [a.format(dir=exported, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count('\n') == 1, err
    assert os.listdir(tmp_path) == []


def test_export_a_size_the_network_cannot_take_is_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    net_opt = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 2, 'num_feat': 4, 'num_block': 1,
               'num_grow_ch': 4}  # scale 2: RRDBNet pixel-unshuffles its input by 2, so odd sizes fail
    from basicsr.archs.rrdbnet_arch import RRDBNet
    torch.save({'params': RRDBNet(**{k: v for k, v in net_opt.items() if k != 'type'}).state_dict()},
               tmp_path / 'w.pth')
    (tmp_path / 'o.yml').write_text(yaml.safe_dump({'scale': 2, 'network_g': net_opt}))
    rc = cli_main(['export', '-opt', str(tmp_path / 'o.yml'), '--weights', str(tmp_path / 'w.pth'), '--onnx',
                   str(tmp_path / 'm.onnx'), '--size', '7x7'])
    err = capsys.readouterr().err
    assert rc == 2 and '--size 7x7: RRDBNet cannot take a 7x7 input' in err and err.count('\n') == 1
    assert not (tmp_path / 'm.onnx').exists()


@pytest.mark.parametrize('missing', ['onnx', 'onnxscript', 'onnxruntime'])
def test_a_missing_onnx_package_is_one_line_naming_the_extra(missing, exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    rc = cli_main(['export', '-opt', str(exported / 'o.yml'), '--onnx', str(tmp_path / 'm.onnx')])
    err = capsys.readouterr().err
    assert rc == 2 and f'{missing} is not installed' in err and "'dvmsr_mma[onnx]'" in err and err.count('\n') == 1


def test_infer_onnx_without_onnxruntime_is_one_line_naming_the_extra(exported, tmp_path, monkeypatch, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((12, 12, 3), np.uint8))
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    rc = cli_main(['infer', '--onnx', str(exported / 'm.onnx'), '-i', str(tmp_path / 'a.png'), '-o',
                   str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert rc == 2 and "onnxruntime is not installed" in err and "'dvmsr_mma[onnx]'" in err and err.count('\n') == 1


@pytest.mark.parametrize('extra, message', [
    (['--tile', '16'], 'that is the tile size; drop --tile'),
    (['--tile-pad', '6'], '--tile-pad 6: the model takes 12x12 tiles'),
    (['--scale', '4'], 'upscales x2'),
    (['--fp16'], 'an ONNX model computes in the precision it was exported in'),
])
def test_infer_onnx_bad_input_is_one_line(extra, message, exported, tmp_path, capsys):
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), np.zeros((12, 12, 3), np.uint8))
    rc = cli_main(['infer', '--onnx', str(exported / 'm.onnx'), '-i', str(img), '-o', str(tmp_path / 'o')] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count('\n') == 1, err


def test_infer_onnx_that_is_not_a_model_is_one_line(tmp_path, capsys):
    (tmp_path / 'bad.onnx').write_bytes(b'not a model')
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((12, 12, 3), np.uint8))
    rc = cli_main(['infer', '--onnx', str(tmp_path / 'bad.onnx'), '-i', str(tmp_path / 'a.png'), '-o',
                   str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert rc == 2 and 'is not a model onnxruntime can load' in err and err.count('\n') == 1
