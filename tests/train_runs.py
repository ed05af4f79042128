"""Shared by the training-run tests (AMP, NaN guard, signals, safetensors): tiny option files, a ``basicsr
train`` driver with test hooks, and running it in a subprocess as ``tests/test_resume.py`` does."""
import os
import subprocess
import sys

import torch
import yaml

SCALE = 2

# `basicsr train` in this process, with hooks chosen by environment variables (set only by these tests):
#   DVMSR_TEST_SIGNAL=ITER:NAME[:COUNT[:RANK]]  send NAME (TERM, INT) COUNT times to itself at the start of ITER
#   DVMSR_TEST_NAN=ITER[:COUNT]                 L1 losses are NaN from iteration ITER on, for COUNT iterations
DRIVER = '''
import os, signal, sys
import dvmsr_mma
from basicsr.losses.basic_loss import L1Loss
from basicsr.models.base_model import BaseModel
from dvmsr_mma.cli import main

now = {'iter': 0}
update = BaseModel.update_learning_rate
sig = os.environ.get('DVMSR_TEST_SIGNAL', '').split(':')


def update_learning_rate(self, current_iter, *args, **kwargs):
    now['iter'] = current_iter
    if sig[0] and current_iter == int(sig[0]) and (len(sig) < 4 or int(os.environ.get('RANK', 0)) == int(sig[3])):
        for _ in range(int(sig[2]) if len(sig) > 2 else 1):
            os.kill(os.getpid(), getattr(signal, 'SIG' + sig[1]))
    return update(self, current_iter, *args, **kwargs)


BaseModel.update_learning_rate = update_learning_rate
nan = os.environ.get('DVMSR_TEST_NAN', '').split(':')
if nan[0]:
    first, count = int(nan[0]), int(nan[1]) if len(nan) > 1 else 10 ** 9
    forward = L1Loss.forward

    def nan_forward(self, *args, **kwargs):
        loss = forward(self, *args, **kwargs)
        return loss * float('nan') if first <= now['iter'] < first + count else loss

    L1Loss.forward = nan_forward
sys.exit(main(sys.argv[1:]))
'''


def tiny_dvmsr(embed_dim=8, drop_path_rate=0.1):
    """Two blocks, so the second has drop path, which draws from torch's generator during training: exact resume
    must bring that stream back."""
    return {'type': 'DVMSR', 'embed_dim': embed_dim, 'depths': [2], 'upscale': SCALE, 'd_state': 4,
            'drop_path_rate': drop_path_rate}


def write_options(folder, write_pairs, total_iter=8, distill=False, save_freq=4, workers=0, **train):
    """``folder/train.yml`` for a tiny run: 6 images, batch 2 (3 iterations per epoch); ``train`` options added."""
    train_hr, train_lr = write_pairs(folder / 'train', 6, 32, seed=0)
    opt = {
        'name': 'run', 'model_type': 'SRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 7,
        'datasets': {'train': {
            'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': train_hr, 'dataroot_lq': train_lr,
            'io_backend': {'type': 'disk'}, 'gt_size': 16, 'use_hflip': True, 'use_rot': True,
            'num_worker_per_gpu': workers, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1}},
        'network_g': tiny_dvmsr(),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 2e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [5], 'gamma': 0.5},
            'total_iter': total_iter, 'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
            **train},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': save_freq, 'use_tb_logger': False},
    }
    if distill:  # teacher 12 wide, student 8: a trained 1x1 adapter
        from basicsr.archs import build_network
        torch.manual_seed(0)
        torch.save({'params_ema': build_network(tiny_dvmsr(12)).state_dict()}, folder / 'teacher.pth')
        opt.update(model_type='DistillationModel', network_t=tiny_dvmsr(12))
        opt['path']['pretrain_network_t'] = str(folder / 'teacher.pth')
        opt['train']['distill_opt'] = {'position': 'end', 'type': 'L1Loss', 'loss_weight': 0.5}
    return save_options(folder, opt)


def save_options(folder, opt):
    path = folder / 'train.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


def start_train(folder, yml, *flags, env=None):
    """``basicsr train -opt yml`` through :data:`DRIVER` in ``folder``, with test hooks from ``env``, started."""
    driver = folder / 'driver.py'
    driver.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(driver), 'train', '-opt', str(yml), *flags], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))


def finish(proc, timeout=300):
    """Wait for a :func:`start_train` process: its ``returncode``, ``stdout`` and ``stderr``."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_train(folder, yml, *flags, env=None):
    return finish(start_train(folder, yml, *flags, env=env))


def run_dir(folder, name='run'):
    return folder / 'experiments' / name


def load_net(path):
    """A network checkpoint written by training, .pth or .safetensors, as {param_key: state_dict}."""
    from dvmsr_mma.tools.weights import load_checkpoint
    return load_checkpoint(str(path))


def assert_same_weights(a, b):
    for key in ('params', 'params_ema'):
        assert a[key].keys() == b[key].keys()
        different = [name for name, value in a[key].items() if not torch.equal(value, b[key][name])]
        assert not different, f'{key}: {len(different)} tensors differ, e.g. {different[0]}'


def run_log(folder):
    """The text of the newest BasicSR log file in ``folder`` (a run's experiments or results folder)."""
    logs = sorted(p for p in os.listdir(folder) if p.endswith('.log'))
    with open(os.path.join(folder, logs[-1])) as f:
        return f.read()
