"""Real-world SR with BasicSR's own Real-ESRGAN models (issue 31): the shipped two-stage recipes and BasicSR 1.4.2's
official Real-ESRGAN files train a few iterations on the CPU with DVMSR and MMA-T generators on tiny generated data;
a missing VGG19 file on a machine that cannot download is one line; the trained generator loads downstream.

Nothing is downloaded: the VGG19 weights a perceptual loss loads are randomly initialised ones saved where
torchvision looks (``$TORCH_HOME`` under ``tmp_path``), and the no-download case points urllib's proxy at a closed
port. The official files below have BasicSR 1.4.2's keys and values (``options/train/RealESRGAN/
train_real{esrnet,esrgan}_x4plus.yml``, comments left out); a test changes only the generator, the data paths,
``num_gpu`` and the sizes (patch, batch, queue, iterations, discriminator width).
"""
import logging
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from dvmsr_mma.cli import main

DEGRADATIONS = """\
resize_prob: [0.2, 0.7, 0.1]
resize_range: [0.15, 1.5]
gaussian_noise_prob: 0.5
noise_range: [1, 30]
poisson_scale_range: [0.05, 3]
gray_noise_prob: 0.4
jpeg_range: [30, 95]
second_blur_prob: 0.8
resize_prob2: [0.3, 0.4, 0.3]
resize_range2: [0.3, 1.2]
gaussian_noise_prob2: 0.5
noise_range2: [1, 25]
poisson_scale_range2: [0.05, 2.5]
gray_noise_prob2: 0.4
jpeg_range2: [30, 95]
gt_size: 256
queue_size: 180
datasets:
  train:
    name: DF2K+OST
    type: RealESRGANDataset
    dataroot_gt: datasets/DF2K
    meta_info: datasets/DF2K/meta_info/meta_info_DF2Kmultiscale+OST_sub.txt
    io_backend:
      type: disk
    blur_kernel_size: 21
    kernel_list: ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']
    kernel_prob: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    sinc_prob: 0.1
    blur_sigma: [0.2, 3]
    betag_range: [0.5, 4]
    betap_range: [1, 2]
    blur_kernel_size2: 21
    kernel_list2: ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']
    kernel_prob2: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    sinc_prob2: 0.1
    blur_sigma2: [0.2, 1.5]
    betag_range2: [0.5, 4]
    betap_range2: [1, 2]
    final_sinc_prob: 0.8
    gt_size: 256
    use_hflip: True
    use_rot: False
    num_worker_per_gpu: 5
    batch_size_per_gpu: 12
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
network_g:
  type: RRDBNet
  num_in_ch: 3
  num_out_ch: 3
  num_feat: 64
  num_block: 23
  num_grow_ch: 32
"""

TAIL = """\
logger:
  print_freq: 100
  save_checkpoint_freq: !!float 5e3
  use_tb_logger: true
  wandb:
    project: ~
    resume_id: ~
dist_params:
  backend: nccl
  port: 29500
"""

OFFICIAL_REALESRNET = f"""\
name: train_RealESRNetx4plus_1000k_B12G4
model_type: RealESRNetModel
scale: 4
num_gpu: auto
manual_seed: 0
gt_usm: True
{DEGRADATIONS}path:
  pretrain_network_g: experiments/pretrained_models/ESRGAN/ESRGAN_SRx4_DF2KOST_official-ff704c30.pth
  param_key_g: params_ema
  strict_load_g: true
  resume_state: ~
train:
  ema_decay: 0.999
  optim_g:
    type: Adam
    lr: !!float 2e-4
    weight_decay: 0
    betas: [0.9, 0.99]
  scheduler:
    type: MultiStepLR
    milestones: [1000000]
    gamma: 0.5
  total_iter: 1000000
  warmup_iter: -1
  pixel_opt:
    type: L1Loss
    loss_weight: 1.0
    reduction: mean
{TAIL}"""

OFFICIAL_REALESRGAN = f"""\
name: train_RealESRGANx4plus_400k_B12G4
model_type: RealESRGANModel
scale: 4
num_gpu: auto
manual_seed: 0
l1_gt_usm: True
percep_gt_usm: True
gan_gt_usm: False
{DEGRADATIONS}network_d:
  type: UNetDiscriminatorSN
  num_in_ch: 3
  num_feat: 64
  skip_connection: True
path:
  pretrain_network_g: experiments/pretrained_models/RealESRNet_x4plus.pth
  param_key_g: params_ema
  strict_load_g: true
  resume_state: ~
train:
  ema_decay: 0.999
  optim_g:
    type: Adam
    lr: !!float 1e-4
    weight_decay: 0
    betas: [0.9, 0.99]
  optim_d:
    type: Adam
    lr: !!float 1e-4
    weight_decay: 0
    betas: [0.9, 0.99]
  scheduler:
    type: MultiStepLR
    milestones: [400000]
    gamma: 0.5
  total_iter: 400000
  warmup_iter: -1
  pixel_opt:
    type: L1Loss
    loss_weight: 1.0
    reduction: mean
  perceptual_opt:
    type: PerceptualLoss
    layer_weights:
      'conv1_2': 0.1
      'conv2_2': 0.1
      'conv3_4': 1
      'conv4_4': 1
      'conv5_4': 1
    vgg_type: vgg19
    use_input_norm: true
    perceptual_weight: !!float 1.0
    style_weight: 0
    range_norm: false
    criterion: l1
  gan_opt:
    type: GANLoss
    gan_type: vanilla
    real_label_val: 1.0
    fake_label_val: 0.0
    loss_weight: !!float 1e-1
  net_d_iters: 1
  net_d_init_iters: 0
{TAIL}"""

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATORS = {  # tiny widths: the point is the pipeline, not the network
    'dvmsr': {'type': 'DVMSR', 'upscale': 4, 'embed_dim': 8, 'depths': [1], 'd_state': 4},
    'mma_t': {'type': 'MMA_T', 'upscale': 4, 'num_feat': 32, 'num_block': 1},  # its channel attention: >= 30
}
GT_SIZE = 32  # the smallest multiple of 4 that RealESRGANModel's USM sharpening of the patch can pad (26)
BATCH = 2
ITERATIONS = 3


def _load(text_or_path):
    from basicsr.utils.options import ordered_yaml
    text = open(text_or_path).read() if os.path.isfile(str(text_or_path)) else text_or_path
    return yaml.load(text, Loader=ordered_yaml()[0])


def write_hr_folder(folder, count=4, size=64, seed=0):
    """``count`` smooth random HR images and a Real-ESRGAN ``meta_info`` file listing them (relative paths)."""
    rng = np.random.default_rng(seed)
    (folder / 'hr').mkdir(parents=True)
    names = []
    for i in range(count):
        img = cv2.resize(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8), (size, size),
                         interpolation=cv2.INTER_CUBIC)
        names.append(f'hr/{i:04d}.png')
        cv2.imwrite(str(folder / names[-1]), img)
    (folder / 'meta_info.txt').write_text('\n'.join(names) + '\n')
    return str(folder), str(folder / 'meta_info.txt')


def save_random_vgg19(torch_home):
    """Randomly initialised torchvision VGG19 weights where torchvision's loader looks
    (``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``). The classifier, which BasicSR never runs, is saved as
    zero-stride views of one value (a few bytes instead of 400 MB)."""
    from torchvision.models import vgg
    torch.manual_seed(0)
    state = {f'features.{k}': v for k, v in vgg.make_layers(vgg.cfgs['E']).state_dict().items()}
    for name, shape in (('0', (4096, 25088)), ('3', (4096, 4096)), ('6', (1000, 4096))):
        state[f'classifier.{name}.weight'] = torch.zeros(1).expand(*shape)
        state[f'classifier.{name}.bias'] = torch.zeros(1).expand(shape[0])
    path = torch_home / 'hub' / 'checkpoints' / 'vgg19-dcbb9e9d.pth'
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def shrunk(opt, folder, generator, pretrain=None, name=None):
    """``opt`` with only the generator, the data paths, ``num_gpu: 0`` and the sizes changed."""
    root, meta = write_hr_folder(folder / 'data') if not (folder / 'data').exists() else \
        (str(folder / 'data'), str(folder / 'data' / 'meta_info.txt'))
    opt['name'] = name or opt['name']
    opt['num_gpu'] = 0
    opt['network_g'] = dict(GENERATORS[generator])
    if 'network_d' in opt:
        opt['network_d']['num_feat'] = 8
    opt['gt_size'] = GT_SIZE
    opt['queue_size'] = 2 * BATCH  # filled after 2 iterations, then the pool swaps pairs
    train_set = opt['datasets']['train']
    train_set.update(dataroot_gt=root, meta_info=meta, gt_size=GT_SIZE, batch_size_per_gpu=BATCH,
                     num_worker_per_gpu=0)
    opt['path']['pretrain_network_g'] = pretrain
    opt['train']['total_iter'] = ITERATIONS
    opt['logger'].update(print_freq=1, use_tb_logger=False)
    opt['logger'].pop('wandb', None)
    return opt


def train(folder, opt, capsys):
    """``basicsr train`` in this process, from ``folder``: (exit code, stderr)."""
    yml = folder / f'{opt["name"]}.yml'
    yml.write_text(yaml.safe_dump(dict(_plain(opt))))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = main(['train', '-opt', str(yml)])
    finally:
        os.chdir(cwd)
        for handler in logging.getLogger('basicsr').handlers[:]:  # the run's log file handler
            logging.getLogger('basicsr').removeHandler(handler)
    return code, capsys.readouterr().err


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def tiny_checkpoint(folder, generator):
    """A ``params_ema`` checkpoint of the tiny generator: the bicubic weights stage 1 starts from."""
    from basicsr.archs import build_network
    torch.manual_seed(1)
    path = folder / f'bicubic_{generator}.pth'
    torch.save({'params_ema': build_network(dict(GENERATORS[generator])).state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp('torch_home')
    save_random_vgg19(home)
    return home


@pytest.fixture(scope='module')
def recipe_runs(tmp_path_factory, torch_home):
    """Runs both stages of the shipped recipes for a generator, once per module: {generator: (folder, results)}."""
    runs = {}

    def run(generator, capsys):
        if generator not in runs:
            folder = tmp_path_factory.mktemp(f'recipes_{generator}')
            start = tiny_checkpoint(folder, generator)
            net = shrunk(_load(f'{REPO}/options/train_realesrnet_{generator}_x4.yml'), folder, generator, start)
            first = train(folder, net, capsys)
            stage1 = folder / 'experiments' / net['name'] / 'models' / 'net_g_latest.pth'
            gan = shrunk(_load(f'{REPO}/options/train_realesrgan_{generator}_x4.yml'), folder, generator,
                         str(stage1) if stage1.exists() else None)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv('TORCH_HOME', str(torch_home))
                second = train(folder, gan, capsys)
            runs[generator] = folder, (net, first), (gan, second)
        return runs[generator]

    return run


@pytest.mark.parametrize('generator', list(GENERATORS))
def test_recipes_train_both_stages_on_cpu(generator, recipe_runs, torch_home, monkeypatch, capsys):
    folder, (net, (code1, err1)), (gan, (code2, err2)) = recipe_runs(generator, capsys)
    assert code1 == 0, err1
    assert code2 == 0, err2
    monkeypatch.setenv('TORCH_HOME', str(torch_home))
    monkeypatch.chdir(folder)
    for opt in (net, gan):  # unknown keys are errors with --strict
        assert main(['check', '--strict', '-opt', str(folder / f'{opt["name"]}.yml')]) == 0, capsys.readouterr().err
    models = folder / 'experiments' / gan['name'] / 'models'
    assert (models / 'net_d_latest.pth').is_file()
    stage1 = torch.load(folder / 'experiments' / net['name'] / 'models' / 'net_g_latest.pth', weights_only=True)
    stage2 = torch.load(models / 'net_g_latest.pth', weights_only=True)
    assert stage1.keys() == stage2.keys() == {'params', 'params_ema'}
    steps = [(v - stage1['params_ema'][k]).abs().max().item() for k, v in stage2['params'].items()]
    assert 0 < max(steps) < 0.01  # trained (3 Adam steps of lr 1e-4) from stage 1's EMA weights, not from scratch


@pytest.mark.parametrize('generator, official', [('dvmsr', OFFICIAL_REALESRNET), ('mma_t', OFFICIAL_REALESRGAN)],
                         ids=['realesrnet-dvmsr', 'realesrgan-mma_t'])
def test_official_realesrgan_files_train_on_cpu(generator, official, tmp_path, torch_home, monkeypatch, capsys):
    """BasicSR 1.4.2's own files (the other two pairs are the recipes' runs: the same keys, other sizes)."""
    monkeypatch.setenv('TORCH_HOME', str(torch_home))
    code, err = train(tmp_path, shrunk(_load(official), tmp_path, generator), capsys)
    assert code == 0, err
    assert torch.load(tmp_path / 'experiments' / _load(official)['name'] / 'models' / 'net_g_latest.pth',
                      weights_only=True).keys() == {'params', 'params_ema'}


def test_missing_vgg19_without_internet_is_one_line(tmp_path, monkeypatch, capsys):
    """No VGG19 file where BasicSR or torchvision look, and urllib (so torch.hub's download) can reach nothing."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_torch_home'))
    for name in ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY'):
        monkeypatch.setenv(name, 'http://127.0.0.1:9')  # the discard port: nothing listens
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.delenv(name, raising=False)
    opt = shrunk(_load(OFFICIAL_REALESRGAN), tmp_path, 'dvmsr')
    code, err = train(tmp_path, opt, capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith('basicsr train: error: train.perceptual_opt: PerceptualLoss needs')
    assert 'vgg19-dcbb9e9d.pth' in last and str(tmp_path / 'empty_torch_home') in last
    assert 'Traceback' not in err
    assert not (tmp_path / 'experiments').exists()  # nothing was built


def test_vgg19_at_basicsr_path_needs_no_download(tmp_path, monkeypatch):
    from dvmsr_mma.training import checks

    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_torch_home'))
    monkeypatch.setattr(checks, '_can_download', lambda url: pytest.fail(f'tried to reach {url}'))
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'experiments' / 'pretrained_models').mkdir(parents=True)
    (tmp_path / 'experiments' / 'pretrained_models' / 'vgg19-dcbb9e9d.pth').write_bytes(b'')
    perceptual = {'perceptual_opt': {'type': 'PerceptualLoss', 'layer_weights': {'conv5_4': 1}}}
    checks.check_vgg_weights(perceptual)
    with pytest.raises(checks.OptionError, match=r'^train\.perceptual_opt\.vgg_type: vgg16, but BasicSR loads'):
        checks.check_vgg_weights({'perceptual_opt': {**perceptual['perceptual_opt'], 'vgg_type': 'vgg16'}})


def test_trained_generator_loads_downstream(recipe_runs, tmp_path, capsys):
    """The stage-2 ``net_g_latest.pth`` (params and params_ema) with ``basicsr infer --weights`` alone, in spandrel as
    ComfyUI's upscale-model loader calls it, and exported to ONNX with dynamic sizes."""
    folder, _, (gan, (code, err)) = recipe_runs('dvmsr', capsys)
    assert code == 0, err
    weights = folder / 'experiments' / gan['name'] / 'models' / 'net_g_latest.pth'
    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'photo.png'), image)
    assert main(['infer', '--weights', str(weights), '-i', str(tmp_path / 'photo.png'), '-o', str(tmp_path / 'o')]) == 0
    assert cv2.imread(str(tmp_path / 'o' / 'photo_x4.png')).shape == (48, 40, 3)

    spandrel = pytest.importorskip('spandrel')
    import dvmsr_mma.spandrel
    dvmsr_mma.spandrel.install(ignore_duplicates=True)  # what the ComfyUI node does on load (another test may have)
    state = torch.load(weights, map_location='cpu', weights_only=True)  # ComfyUI's UpscaleModelLoader
    model = spandrel.ModelLoader().load_from_state_dict(state).eval()
    assert model.scale == 4
    lr = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert model(lr).shape == (1, 3, 48, 40)

    onnxruntime = pytest.importorskip('onnxruntime')
    onnx_path = tmp_path / 'm.onnx'
    assert main(['export', '--weights', str(weights), '--onnx', str(onnx_path), '--dynamic']) == 0
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    for h, w in ((12, 10), (9, 13)):
        x = torch.rand(1, 3, h, w)
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()  # spandrel clamps to [0, 1]; the ONNX graph is the bare network
        assert out.shape == (1, 3, 4 * h, 4 * w)
        assert np.abs(np.clip(out, 0, 1) - expected).max() < 1e-4


@pytest.mark.parametrize('damage, message', [
    (lambda folder: os.remove(folder / 'hr' / '0002.png'), r"meta_info: 1 of its 4 images are not in dataroot_gt"),
    (lambda folder: (folder / 'meta_info.txt').write_text(''), r'meta_info: .* lists no images'),
    (lambda folder: (folder / 'meta_info.txt').unlink(), r'meta_info: no such file'),
])
def test_real_esrgan_dataset_listing_is_checked(damage, message, tmp_path):
    from dvmsr_mma.training.checks import check_dataset
    from dvmsr_mma.utils.errors import OptionError

    opt = shrunk(_load(OFFICIAL_REALESRNET), tmp_path, 'dvmsr')['datasets']['train']
    opt['phase'] = 'train'
    check_dataset('datasets.train', opt, 4)
    opt['batch_size_per_gpu'] = 5
    with pytest.raises(OptionError, match=r'batch_size_per_gpu: 5 is more than the dataset\'s 4 images'):
        check_dataset('datasets.train', opt, 4)
    opt['batch_size_per_gpu'] = 2
    damage(tmp_path / 'data')
    with pytest.raises(OptionError, match=r'^datasets\.train\.' + message):
        check_dataset('datasets.train', opt, 4)


def test_download_probe_is_bounded_even_when_the_lookup_hangs(monkeypatch):
    """A name lookup the socket timeout does not bound (no reachable DNS server) still ends the probe in time."""
    import threading
    import time
    import urllib.error
    import urllib.request

    from dvmsr_mma.training import checks

    released = threading.Event()

    def hanging_lookup(*args, **kwargs):
        released.wait(10)
        raise urllib.error.URLError('no name server answered')

    monkeypatch.setattr(checks, 'DOWNLOAD_TIMEOUT', 0.2)
    monkeypatch.setattr(urllib.request, 'urlopen', hanging_lookup)
    start = time.monotonic()
    try:
        assert checks._can_download('https://download.pytorch.org/models/vgg19-dcbb9e9d.pth') is False
        assert time.monotonic() - start < 2
    finally:
        released.set()  # the probe's thread ends here, not in a later test
