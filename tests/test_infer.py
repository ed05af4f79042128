"""SRInferencer and ``basicsr infer``: image kinds x scales with a tiny DVMSR, tiling, bad files, strict loading."""
import os

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs.srvgg_arch import SRVGGNetCompact

import dvmsr_mma  # noqa: F401
from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.cli import main as cli_main
from dvmsr_mma.tools.infer import SRInferencer
from dvmsr_mma.utils.errors import OptionError


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



@pytest.mark.parametrize('alpha', ['network', 'bicubic'])
@pytest.mark.parametrize('dtype, value', [(np.uint8, 255), (np.uint8, 0), (np.uint8, 77), (np.uint16, 65535)])
def test_constant_alpha_passes_through_unchanged(alpha, dtype, value):
    """An opaque (or uniformly translucent) image keeps its alpha exactly; through the network an opaque alpha
    came back as low as 194 (issue 30, item 7)."""
    img = make_image('rgb16' if dtype == np.uint16 else 'rgb')
    img = np.concatenate([img, np.full(img.shape[:2] + (1,), value, dtype)], axis=2)
    out = SRInferencer(tiny_dvmsr(2), scale=2, device='cpu', alpha=alpha).enhance(img)
    assert out.dtype == dtype and out.shape == (20, 24, 4)
    assert (out[:, :, 3] == value).all(), (out[:, :, 3].min(), out[:, :, 3].max())


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_bicubic_alpha_is_opencvs_inter_cubic(scale):
    """The bicubic alpha is computed in torch (no cv2 at inference) and equals cv2.resize(INTER_CUBIC)."""
    rgba = make_image('rgba', 9, 13)
    out = SRInferencer(tiny_dvmsr(scale), scale=scale, device='cpu', alpha='bicubic').enhance(rgba)
    want = cv2.resize(rgba[:, :, 3].astype(np.float32) / 255, (13 * scale, 9 * scale), interpolation=cv2.INTER_CUBIC)
    assert np.abs(out[:, :, 3].astype(np.float32) - np.rint(want.clip(0, 1) * 255)).max() <= 1


def test_enhance_refuses_other_layouts_in_one_line():
    with pytest.raises(OptionError, match=r'unsupported image shape \(4, 5, 2\)'):
        SRInferencer(tiny_dvmsr(2), scale=2, device='cpu').enhance(np.zeros((4, 5, 2), np.uint8))

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
    """A Mamba scan sees the whole padded tile, so tiled output is close, not equal (see dvmsr_mma.tools.infer)."""
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
    from dvmsr_mma.tools.weights import load_weights
    from dvmsr_mma.utils.errors import OptionError
    path = tmp_path / 'w.pth'
    torch.save(SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict(), path)
    with pytest.raises(OptionError, match='shape mismatches .*body.0.weight'):
        load_weights(SRVGGNetCompact(num_feat=4, num_conv=2, upscale=2), str(path))


def test_safetensors_optional(tmp_path):
    from dvmsr_mma.tools.weights import load_weights
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)
    path = tmp_path / 'w.safetensors'
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b'')
        from dvmsr_mma.utils.errors import OptionError
        with pytest.raises(OptionError, match='pip install safetensors'):
            load_weights(net, str(path))
        return
    save_file(net.state_dict(), str(path))
    load_weights(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2), str(path))


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           'allocate 3840000000 bytes. Error code 12 (Cannot allocate memory)')
CUDA_OOM = ('CUDA out of memory. Tried to allocate 3.58 GiB. GPU 0 has a total capacity of 79.15 GiB of which '
            '1.20 GiB is free. Of the allocated memory 70.12 GiB is allocated by PyTorch')


@pytest.mark.parametrize('error', [RuntimeError(CPU_OOM), torch.cuda.OutOfMemoryError(CUDA_OOM)],
                         ids=['cpu', 'cuda'])
@pytest.mark.parametrize('tile', [0, 16])
def test_out_of_memory_is_one_line_and_stops_the_run(error, tile, tiny_setup, tmp_path, monkeypatch, capsys):
    """The network's forward raises torch's exact out-of-memory error (no gigabytes allocated): one line naming
    the image, its size, the size that failed and a --tile, exit 2, and the next image is not tried."""
    _, _, opt = tiny_setup
    src = tmp_path / 'in'
    src.mkdir()
    for name in ('a.png', 'b.png'):
        cv2.imwrite(str(src / name), make_image('rgb', 40, 48))
    calls = []

    def forward(self, x):
        calls.append(x.shape)
        raise error
    monkeypatch.setattr(DVMSR, 'forward', forward)
    rc = cli_main(['infer', '-opt', str(opt), '-i', str(src), '-o', str(tmp_path / 'out'), '--tile', str(tile),
                   '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2 and 'Traceback' not in err and err.count('\n') == 1, err
    assert err.startswith(f'basicsr infer: error: {src / "a.png"}: out of memory on the CPU upscaling a 48x40 image')
    assert 'it needed 3.84 GB more' in err
    assert ('pass a smaller tile, e.g. --tile ' if tile else 'pass --tile ') in err
    assert len(calls) == 1  # stopped: b.png would fail the same way
    assert os.listdir(tmp_path / 'out') == []


def test_output_too_big_for_the_cpu_says_tiles_do_not_help(monkeypatch):
    from dvmsr_mma.tools.infer import NotEnoughMemory

    def zeros(*size):
        raise RuntimeError(CPU_OOM)
    inferencer = SRInferencer(tiny_dvmsr(2), scale=2, tile=8, device='cpu')
    monkeypatch.setattr(torch, 'zeros', zeros)  # the tiled run's output buffer
    with pytest.raises(NotEnoughMemory, match=r'for the 40x32 output image itself \(as float32: 15 kB; .*'
                                              'smaller tiles do not help'):
        inferencer.run(torch.rand(1, 3, 16, 20))


def test_suggested_tile():
    from dvmsr_mma.tools.infer import suggest_tile
    # the user's case: 4000x4000 untiled, a 3.84 GB allocation failed with 2 GB available
    tile = suggest_tile(4000, 4000, 0, 10, 3_840_000_000, 2_000_000_000)
    assert tile % 16 == 0 and 32 <= tile <= 2000
    assert suggest_tile(4000, 4000, 0, 10, None, None) == 1968  # unknown amounts: half the side, less the padding
    assert suggest_tile(4000, 4000, 512, 10, 10 ** 9, 10 ** 9) < 512
    assert suggest_tile(4000, 4000, 32, 10, None, None) == 16  # already at the floor: still smaller
    assert suggest_tile(4000, 4000, 2, 0, None, None) == 1


def test_out_of_memory_frees_the_activations():
    """The error keeps torch's error as its cause, but not the tensors the network's frames held."""
    import weakref

    from dvmsr_mma.tools.infer import NotEnoughMemory
    held = []

    class Net(torch.nn.Module):
        upscale = 2

        def forward(self, x):
            activation = torch.ones(8, 8)
            held.append(weakref.ref(activation))
            raise RuntimeError(CPU_OOM)
    with pytest.raises(NotEnoughMemory) as info:
        SRInferencer(Net(), device='cpu').run(torch.rand(1, 3, 8, 8))
    assert CPU_OOM in str(info.value.__cause__)
    assert held[0]() is None


@pytest.mark.cuda
def test_real_cuda_out_of_memory_frees_memory():
    """A real CUDA OOM (this process capped to a small share of the GPU): one line with a --tile, and the
    network's activations freed afterwards (traceback frames cleared, cache emptied)."""
    from dvmsr_mma.tools.infer import NotEnoughMemory
    inferencer = SRInferencer(DVMSR(upscale=4), scale=4, device='cuda')
    baseline = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (baseline + 256 * 2 ** 20) / total))
    try:
        with pytest.raises(NotEnoughMemory, match=r'out of memory on cuda.* upscaling a 1024x1024 image .*--tile \d+'):
            inferencer.run(torch.rand(1, 3, 1024, 1024))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    image = 3 * 1024 * 1024 * 4  # the input on the GPU, which the raising frame of run() still holds
    assert torch.cuda.memory_allocated() <= baseline + image + 2 ** 20
    assert torch.cuda.memory_reserved() <= baseline + image + 64 * 2 ** 20


def test_nan_weights_are_one_line(tiny_setup, tmp_path, capsys):
    net, _, opt = tiny_setup
    state = net.state_dict()
    state['conv_first.weight'].view(-1)[:3] = float('nan')
    state['conv_first.weight'].view(-1)[3] = float('inf')
    bad = tmp_path / 'nan.pth'
    torch.save({'params_ema': state}, bad)
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), make_image('rgb'))
    rc = cli_main(['infer', '-opt', str(opt), '--weights', str(bad), '-i', str(img), '-o', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1
    assert err == (f"basicsr infer: error: {bad}: tensor 'conv_first.weight' has 3 NaN and 1 Inf of its 216 values; "
                   'the checkpoint is broken (e.g. saved after training diverged): use an earlier one\n')
    assert not os.path.exists(tmp_path / 'o' / 'a_x2.png')


def test_integer_buffers_are_not_checked():
    from dvmsr_mma.tools.weights import check_finite
    check_finite({'num_batches_tracked': torch.tensor(3), 'w': torch.ones(2)}, 'w.pth')


def _fail_if_run(*args, **kwargs):
    raise AssertionError('an image was processed before the bad option was found')


@pytest.mark.parametrize('folder, files', [('empty', []), ('others', ['notes.txt', 'b.csv'])])
def test_folder_without_images_is_one_line(folder, files, tiny_setup, tmp_path, monkeypatch, capsys):
    _, _, opt = tiny_setup
    src = tmp_path / folder
    src.mkdir()
    (src / 'sub').mkdir()
    (src / 'sub' / 'deep.png').write_bytes(b'')  # sub-folders are not searched
    for name in files:
        (src / name).write_text('not an image')
    monkeypatch.setattr(SRInferencer, 'enhance', _fail_if_run)
    rc = cli_main(['infer', '-opt', str(opt), '-i', str(src), '-o', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith(f'basicsr infer: error: -i: no images in {src}: ')
    assert '*.png *.jpg' in err
    assert ('only other files (b.csv, notes.txt)' if files else 'it holds no files') in err


def test_output_is_a_file_is_one_line(tiny_setup, tmp_path, monkeypatch, capsys):
    _, _, opt = tiny_setup
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), make_image('rgb'))
    monkeypatch.setattr(SRInferencer, 'enhance', _fail_if_run)
    rc = cli_main(['infer', '-opt', str(opt), '-i', str(img), '-o', str(img)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f'basicsr infer: error: -o: {img} is a file, not a folder; name a folder (it is created if missing)\n'


def _sysfs_refuses_files():
    """sysfs takes no new files, even from root (these tests may run as root, whom chmod does not stop)."""
    try:
        open('/sys/.dvmsr-write-test', 'w').close()
    except OSError:
        return True
    os.remove('/sys/.dvmsr-write-test')
    return False


@pytest.mark.skipif(not os.path.isdir('/sys') or not _sysfs_refuses_files(), reason='needs a read-only /sys')
@pytest.mark.parametrize('out, words', [('/sys', 'cannot write files in the folder /sys ('),
                                        ('/sys/dvmsr-out', 'cannot create the folder /sys/dvmsr-out (')])
def test_unwritable_output_is_one_line(out, words, tiny_setup, tmp_path, monkeypatch, capsys):
    _, _, opt = tiny_setup
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), make_image('rgb'))
    monkeypatch.setattr(SRInferencer, 'enhance', _fail_if_run)
    rc = cli_main(['infer', '-opt', str(opt), '-i', str(img), '-o', out])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith(f'basicsr infer: error: -o: {words}')
    assert err.endswith('); name a folder you can write to\n')


def test_unknown_network_argument_is_one_line(tmp_path, capsys):
    opt = tmp_path / 'opt.yml'
    opt.write_text('scale: 2\nnetwork_g: {type: MMA, num_feat: 8, num_block: 1, upscale: 2, res_scale: 0.1}\n')
    (tmp_path / 'w.pth').write_bytes(b'')
    assert cli_main(['infer', '-opt', str(opt), '--weights', str(tmp_path / 'w.pth'), '-i', str(tmp_path / 'w.pth'),
                     '-o', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1].startswith(
        'basicsr infer: error: network_g: MMA got an unexpected argument res_scale; MMA takes num_in_ch, ')
