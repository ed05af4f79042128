"""Each basicsr-1.4.2 patch of ``dvmsr_mma.training.compat``, tested where it would fail without the patch."""
import os
import random
import socket
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch

from dvmsr_mma.training import compat
from dvmsr_mma.utils.errors import OptionError


def _run_python(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_functional_tensor_alias_lets_basicsr_import():
    # basicsr/data/degradations.py does `from torchvision.transforms.functional_tensor import rgb_to_grayscale`.
    from basicsr.data import degradations  # noqa: F401
    from torchvision.transforms.functional_tensor import rgb_to_grayscale
    assert rgb_to_grayscale(torch.ones(1, 3, 2, 2)).shape == (1, 1, 2, 2)


def test_missing_libgl_is_one_clear_error(tmp_path):
    fake = tmp_path / 'cv2'
    fake.mkdir()
    (fake / '__init__.py').write_text("raise ImportError('libGL.so.1: cannot open shared object file')\n")
    result = _run_python('import dvmsr_mma', {'PYTHONPATH': f'{tmp_path}{os.pathsep}{os.getcwd()}'})
    assert result.returncode != 0
    assert 'pip install opencv-python-headless' in result.stderr


def _resume_opt(tmp_path, auto_resume=True):
    root = tmp_path / 'experiments' / 'run'
    return {
        'name': 'run',
        'num_gpu': 0,
        'auto_resume': auto_resume,
        'is_train': True,
        'path': {'experiments_root': str(root), 'models': str(root / 'models'), 'resume_state': None},
        'network_g': {},
    }


def _save_state(opt, it):
    net = torch.nn.Linear(2, 2)
    optim = torch.optim.Adam(net.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(optim, milestones=[10, 20])
    assert isinstance(sched.state_dict()['milestones'], Counter)  # what weights_only=True refuses
    state_dir = os.path.join(opt['path']['experiments_root'], 'training_states')
    os.makedirs(state_dir, exist_ok=True)
    os.makedirs(opt['path']['models'], exist_ok=True)
    torch.save({'params': net.state_dict()}, os.path.join(opt['path']['models'], f'net_g_{it}.pth'))
    torch.save({'epoch': 0, 'iter': it, 'optimizers': [optim.state_dict()], 'schedulers': [sched.state_dict()]},
               os.path.join(state_dir, f'{it}.state'))


def test_auto_resume_finds_newest_state_under_root_path_on_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # upstream looked in the cwd's experiments/, which is not the root
    import basicsr.train
    opt = _resume_opt(tmp_path)
    _save_state(opt, 5)
    _save_state(opt, 20)
    state = basicsr.train.load_resume_state(opt)
    assert state['iter'] == 20
    assert opt['path']['resume_state'].endswith('20.state')
    assert state['schedulers'][0]['milestones'] == Counter({10: 1, 20: 1})


def test_auto_resume_skips_truncated_newest_state(tmp_path, caplog):
    import basicsr.train
    opt = _resume_opt(tmp_path)
    _save_state(opt, 5)
    _save_state(opt, 10)
    newest = os.path.join(opt['path']['experiments_root'], 'training_states', '10.state')
    with open(newest, 'r+b') as f:
        f.truncate(os.path.getsize(newest) // 2)
    state = basicsr.train.load_resume_state(opt)
    assert state['iter'] == 5
    assert opt['path']['resume_state'].endswith('5.state')


def test_auto_resume_skips_state_without_its_network(tmp_path):
    import basicsr.train
    opt = _resume_opt(tmp_path)
    _save_state(opt, 5)
    _save_state(opt, 10)
    os.remove(os.path.join(opt['path']['models'], 'net_g_10.pth'))
    assert basicsr.train.load_resume_state(opt)['iter'] == 5


def test_checkpoint_saves_are_atomic(tmp_path, monkeypatch):
    from basicsr.models import base_model
    path = tmp_path / 'net_g_latest.pth'
    base_model.torch.save({'params': {'w': torch.ones(2)}}, str(path))

    def interrupted_save(obj, f):  # a save that dies half-way, like a kill -9 would
        with open(f, 'wb') as handle:
            handle.write(b'PK\x03\x04 partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        base_model.torch.save({'params': {'w': torch.zeros(2)}}, str(path))
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)['params']['w'], torch.ones(2))
    assert os.listdir(tmp_path) == ['net_g_latest.pth']


def test_explicit_resume_state_loads_on_cpu(tmp_path):
    import basicsr.train
    opt = _resume_opt(tmp_path, auto_resume=False)
    _save_state(opt, 7)
    opt['path']['resume_state'] = os.path.join(opt['path']['experiments_root'], 'training_states', '7.state')
    state = basicsr.train.load_resume_state(opt)
    assert state['iter'] == 7
    assert state['optimizers'][0]['param_groups'][0]['lr'] == pytest.approx(1e-3)


def test_missing_resume_state_is_named(tmp_path):
    import basicsr.train
    opt = _resume_opt(tmp_path, auto_resume=False)
    opt['path']['resume_state'] = str(tmp_path / 'nope.state')
    with pytest.raises(FileNotFoundError, match='nope.state'):
        basicsr.train.load_resume_state(opt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_pytorch_launcher_uses_gloo_without_cuda():
    if torch.cuda.is_available():
        pytest.skip('checks the CPU-only fallback')
    result = _run_python(
        """
        import dvmsr_mma
        import torch.distributed as dist
        from basicsr.utils.dist_util import init_dist
        init_dist('pytorch')
        print(dist.get_backend(), dist.get_world_size())
        dist.destroy_process_group()
        """, {
            'RANK': '0',
            'LOCAL_RANK': '0',
            'WORLD_SIZE': '1',
            'MASTER_ADDR': '127.0.0.1',
            'MASTER_PORT': str(_free_port())
        })
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['gloo', '1']


@pytest.mark.parametrize('opt, message', [
    ({'num_gpu': 1, 'datasets': {}}, 'num_gpu: 1 but 0 CUDA'),
    ({'num_gpu': 0, 'datasets': {'train': {'prefetch_mode': 'cuda'}}}, 'datasets.train.prefetch_mode: cuda'),
    ({'num_gpu': 0, 'datasets': {'train': {'prefetch_mode': 'cpu', 'persistent_workers': True}}}, 'hangs'),
])
def test_device_traps_are_clear_errors(opt, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    with pytest.raises(OptionError, match=message):
        compat.check_device_options(opt)


def test_parse_options_is_checked():
    import basicsr.test
    import basicsr.train
    for module in (basicsr.train, basicsr.test):
        assert module.parse_options.__wrapped__.__module__ == 'basicsr.utils.options'


def test_unknown_type_names_close_registered_names():
    from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY
    message = r"'SRVGGNetCompat' is not registered in .*arch.*did you mean SRVGGNetCompact"
    with pytest.raises(OptionError, match=message):
        ARCH_REGISTRY.get('SRVGGNetCompat')
    with pytest.raises(OptionError, match='known: .*L1Loss'):
        LOSS_REGISTRY.get('Nothing')
    assert LOSS_REGISTRY.get('L1Loss').__name__ == 'L1Loss'


def _real_esrgan_model(kind):
    """A RealESRNetModel / RealESRGANModel on the CPU (``num_gpu: 0``), with a tiny DVMSR and queue of 4 pairs."""
    from basicsr.models import build_model
    opt = {
        'name': 'real', 'model_type': kind, 'scale': 2, 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
        'network_g': {'type': 'DVMSR', 'embed_dim': 8, 'depths': [1], 'upscale': 2, 'd_state': 4},
        'network_d': {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8},
        'path': {'pretrain_network_g': None}, 'queue_size': 4, 'gt_size': 32, 'gt_usm': True, 'l1_gt_usm': True,
        'percep_gt_usm': True, 'gan_gt_usm': False,
        'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.5, 1.5], 'gaussian_noise_prob': 0.5,
        'noise_range': [1, 30], 'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4, 'jpeg_range': [30, 95],
        'second_blur_prob': 0.8, 'resize_prob2': [0.3, 0.4, 0.3], 'resize_range2': [0.5, 1.2],
        'gaussian_noise_prob2': 0.5, 'noise_range2': [1, 25], 'poisson_scale_range2': [0.05, 2.5],
        'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95],
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-4}, 'optim_d': {'type': 'Adam', 'lr': 1e-4},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss'}, 'gan_opt': {'type': 'GANLoss', 'gan_type': 'vanilla'}},
    }
    return build_model(opt)


@pytest.mark.parametrize('kind', ['RealESRNetModel', 'RealESRGANModel'])
def test_real_esrgan_models_degrade_and_queue_on_the_model_device(kind):
    # upstream: DiffJPEG().cuda(), USMSharp().cuda() and torch.zeros(...).cuda() ("Found no NVIDIA driver")
    model = _real_esrgan_model(kind)
    assert {p.device.type for p in model.jpeger.parameters()} == {'cpu'}
    assert {b.device.type for b in model.usm_sharpener.buffers()} == {'cpu'}
    random.seed(0)  # the degradations draw from Python's, numpy's and torch's generators
    np.random.seed(0)
    torch.manual_seed(0)
    kernel = torch.zeros(2, 21, 21)
    kernel[:, 10, 10] = 1
    batch = {'gt': torch.rand(2, 3, 48, 48), 'kernel1': kernel, 'kernel2': kernel, 'sinc_kernel': kernel}
    for _ in range(3):  # fills the queue of 4 pairs, then swaps pairs with it
        model.feed_data(batch)
    assert model.queue_lr.device.type == 'cpu' and model.queue_ptr == 4
    assert model.lq.shape == (2, 3, 16, 16) and model.gt.shape == (2, 3, 32, 32)
    model.optimize_parameters(1)
    assert torch.isfinite(model.output).all()
