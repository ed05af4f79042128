"""Exact resume: a CPU run killed (SIGKILL) while training or while saving, then resumed with
``--auto_resume``, ends with the same weights, bit for bit, as a run that was never interrupted."""
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from basicsr.utils import get_root_logger

SCALE = 2
TOTAL_ITER = 10  # 6 images, batch 2: 3 iterations per epoch, so the kills and saves fall inside epochs

# Runs `basicsr train` in a process that kills itself with SIGKILL at one chosen point:
#   iter N      -> at the start of iteration N (mid-training)
#   save NAME   -> while writing file NAME: half of the bytes are on disk when it dies
KILLER = """
import os, signal, sys
import torch
import dvmsr_mma
from basicsr.models.base_model import BaseModel
from dvmsr_mma.cli import main

where, at = sys.argv[1], sys.argv[2]
if where == 'iter':
    update = BaseModel.update_learning_rate
    def update_learning_rate(self, current_iter, *args, **kwargs):
        if current_iter == int(at):
            os.kill(os.getpid(), signal.SIGKILL)
        return update(self, current_iter, *args, **kwargs)
    BaseModel.update_learning_rate = update_learning_rate
else:
    save = torch.save
    def half_save(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if os.path.basename(str(f)).split('.tmp')[0] == at:
            with open(f, 'r+b') as fh:
                fh.truncate(os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = half_save
sys.exit(main(['train', '-opt', sys.argv[3]]))
"""


def tiny_dvmsr(embed_dim):
    # drop path draws from torch's generator during training, so that stream has to come back too
    return {'type': 'DVMSR', 'embed_dim': embed_dim, 'depths': [2], 'upscale': SCALE, 'd_state': 4,
            'drop_path_rate': 0.2}


def write_options(folder, write_pairs, distill):
    train_hr, train_lr = write_pairs(folder / 'train', 6, 32, seed=0)
    val_hr, val_lr = write_pairs(folder / 'val', 2, 24, seed=1)
    opt = {
        'name': 'run', 'model_type': 'SRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 7,
        'datasets': {
            'train': {
                'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': train_hr, 'dataroot_lq': train_lr,
                'io_backend': {'type': 'disk'}, 'gt_size': 16, 'use_hflip': True, 'use_rot': True,
                'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1
            },
            'val': {'name': 'val', 'type': 'PairedImageDataset', 'dataroot_gt': val_hr, 'dataroot_lq': val_lr,
                    'io_backend': {'type': 'disk'}},
        },
        'network_g': tiny_dvmsr(8),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 2e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [5], 'gamma': 0.5},
            'total_iter': TOTAL_ITER,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
        },
        # validation right after each save: it must not move the random stream the resumed run restores
        'val': {'val_freq': 4, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE, 'test_y_channel': True}}},
        'logger': {'print_freq': 100, 'save_checkpoint_freq': 4, 'use_tb_logger': False},
    }
    if distill:  # student and teacher widths differ: 1x1 adapters, trained and kept in the resume state
        torch.manual_seed(0)
        from basicsr.archs import build_network
        teacher = build_network(tiny_dvmsr(12))
        torch.save({'params_ema': teacher.state_dict()}, folder / 'teacher.pth')
        opt['model_type'] = 'DistillationModel'
        opt['network_t'] = tiny_dvmsr(12)
        opt['path']['pretrain_network_t'] = str(folder / 'teacher.pth')
        opt['train']['distill_opt'] = {'position': 'end', 'type': 'L1Loss', 'loss_weight': 0.5}
    path = folder / 'train.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


def train(folder, *args):
    return subprocess.run([sys.executable, *args], cwd=folder, capture_output=True, text=True, timeout=600)


def final_weights(folder):
    return torch.load(folder / 'experiments' / 'run' / 'models' / 'net_g_latest.pth', weights_only=True)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """Final weights of uninterrupted runs, one per model type (computed on first use)."""
    runs = {}

    def get(distill, write_pairs):
        if distill not in runs:
            folder = tmp_path_factory.mktemp('uninterrupted')
            result = train(folder, '-m', 'dvmsr_mma', 'train', '-opt', str(write_options(folder, write_pairs, distill)))
            assert result.returncode == 0, result.stderr[-3000:]
            runs[distill] = final_weights(folder)
        return runs[distill]

    return get


@pytest.mark.parametrize('distill, kill', [
    (False, ('iter', '6')),  # mid-training, mid-epoch (epoch 1, one batch used), after the save at iter 4
    (False, ('save', '8.state')),  # during the training-state save of iter 8: resumes from iter 4
    (False, ('save', 'net_g_8.pth')),  # during the network save of iter 8
    (True, ('iter', '7')),  # DistillationModel: adapters, EMA and teacher path come back too
], ids=['mid-training', 'state-save', 'network-save', 'distillation'])
def test_killed_run_resumes_bit_identical(tmp_path, write_pairs, uninterrupted, distill, kill):
    reference = uninterrupted(distill, write_pairs)
    yml = write_options(tmp_path, write_pairs, distill)
    killer = tmp_path / 'killer.py'
    killer.write_text(KILLER)

    result = train(tmp_path, str(killer), *kill, str(yml))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    states = tmp_path / 'experiments' / 'run' / 'training_states'
    assert sorted(os.listdir(states))[0] == '4.state'  # the run got past its first save
    assert not (states / '8.state').exists()

    result = train(tmp_path, '-m', 'dvmsr_mma', 'train', '-opt', str(yml), '--auto_resume')
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = final_weights(tmp_path)
    for key in ('params', 'params_ema'):
        assert resumed[key].keys() == reference[key].keys()
        different = [name for name, value in resumed[key].items() if not torch.equal(value, reference[key][name])]
        assert not different, f'{key}: {len(different)} tensors differ from the uninterrupted run, e.g. {different[0]}'


@pytest.mark.parametrize('state, skip, warning', [
    ({'epoch': 2, 'iter': 8, 'iters_per_epoch': 3, 'rng': {}}, 4, None),  # 2 of epoch 2's 3 batches used
    ({'epoch': 2, 'iter': 8, 'iters_per_epoch': 4, 'rng': {}}, None, 'written with 4 iterations per epoch'),
    ({'epoch': 2, 'iter': 8}, None, 'has no sampler position'),
])
def test_sampler_position_checked(monkeypatch, caplog, state, skip, warning):
    from dvmsr_mma.training import resume

    class Sampler:
        def resume_from(self, skip, rng):
            self.resumed = skip

    sampler = Sampler()
    basicsr_logger = get_root_logger()  # does not propagate: listen to it directly
    basicsr_logger.addHandler(caplog.handler)
    monkeypatch.setattr(resume, '_train_run', {'sampler': sampler, 'iters_per_epoch': 3, 'batch_size': 2,
                                               'world_size': 1})
    try:
        resume.restore_position(state)
    finally:
        basicsr_logger.removeHandler(caplog.handler)
    assert getattr(sampler, 'resumed', None) == skip
    if warning:
        assert warning in caplog.text and 'starts again from its first batch' in caplog.text
