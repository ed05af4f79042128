"""Dry run of every options/*.yml, so none can rot: parse as BasicSR does, every ``type:`` registered, every
network built (the full-size ones on the CPU, once per distinct configuration), losses built, datasets built on
a tiny fixture that mimics the file's own data layout (folder or LMDB, ``x<s>`` LR names), distillation taps
resolved by a DistillationModel over narrowed copies of the networks, and the run-to-run paths consistent."""
import copy
import glob
import os

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.losses import build_loss
from basicsr.models import build_model
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the bicubic-pair files; the real-world recipes (HR only, degraded by the model, no validation set) are run by
# tests/test_realesrgan.py
OPTION_FILES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'options', '*.yml'))
                      if 'realesr' not in os.path.basename(p))
DISTILL_KEYS = ('position', 'layers', 'layers_t', 'blocks', 'blocks_t', 'probe_size')
MY_FILES = [p for p in OPTION_FILES if os.path.basename(p).startswith(('train_', 'test_mma_'))]


def load(path):
    with open(os.path.join(ROOT, path)) as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


_param_counts = {}


def param_count(net_opt):
    key = yaml.safe_dump(dict(net_opt))
    if key not in _param_counts:
        net = build_network(copy.deepcopy(dict(net_opt)))
        _param_counts[key] = sum(p.numel() for p in net.parameters())
    return _param_counts[key]


def test_expected_files_exist():
    names = {os.path.basename(p) for p in OPTION_FILES}
    expected = {'train_dvmsr_teacher_x4.yml', 'train_dvmsr_x4_distill.yml', 'train_dvmsr_x4_distill_mid.yml',
                'train_dvmsr_x4_distill_mid_l2.yml', 'train_dvmsr_x4_distill_mid_5to1.yml',
                'train_dvmsr_x4_distill_5to1.yml', 'train_dvmsr_x4_scratch.yml'}
    for s in (2, 3, 4):
        expected |= {f'train_mma_x{s}_pretrain.yml', f'train_mma_x{s}_finetune.yml', f'train_mma_t_x{s}.yml',
                     f'test_mma_x{s}.yml', f'test_mma_t_x{s}.yml'}
    assert expected <= names


# ------------------------------------------------------------------------------------------- fixtures
def _write_image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8), (w, h))
    cv2.imwrite(str(path), img)


def fixture_dataset(dataset_opt, scale, tmp_path):
    """Replace the dataset's roots by a tiny copy of the same layout; returns the patched options."""
    opt = copy.deepcopy(dict(dataset_opt))
    size = max(opt.get('gt_size', 0), 12 * scale)
    size -= size % scale
    tmpl = opt.get('filename_tmpl', '{}')
    root = tmp_path / opt['name']
    hr, lr = root / 'HR', root / 'LR'
    hr.mkdir(parents=True)
    lr.mkdir()
    names = ['0001', '0002']
    for i, name in enumerate(names):
        _write_image(hr / f'{name}.png', size, size + scale, i)
        _write_image(lr / f'{tmpl.format(name)}.png', size // scale, size // scale + 1, i)
    if opt['io_backend']['type'] == 'lmdb':
        make_lmdb_from_imgs(str(hr), str(root / 'HR.lmdb'), [f'{n}.png' for n in names], names)
        make_lmdb_from_imgs(str(lr), str(root / 'LR.lmdb'), [f'{tmpl.format(n)}.png' for n in names],
                            [tmpl.format(n) for n in names])
        hr, lr = root / 'HR.lmdb', root / 'LR.lmdb'
    opt['dataroot_gt'] = str(hr)
    if 'dataroot_lq' in opt:
        opt['dataroot_lq'] = str(lr)
    opt['num_worker_per_gpu'] = 0
    return opt


# ------------------------------------------------------------------------------------------- dry run
@pytest.mark.parametrize('path', OPTION_FILES)
def test_option_file_dry_run(path, tmp_path):
    opt = load(path)
    is_train = os.path.basename(path).startswith('train_')
    scale = opt['scale']
    assert opt['name'] and MODEL_REGISTRY.get(opt['model_type'])
    assert opt.get('num_gpu') == 'auto', 'num_gpu: auto runs on whatever is there (0 GPUs included)'

    # networks build; their scale matches the file's
    for key in (k for k in opt if k.startswith('network_')):
        assert opt[key].get('upscale') == scale
        assert param_count(opt[key]) > 0

    # datasets: relative paths under datasets/, built on a tiny fixture, pairs of the right scale
    for phase, dataset_opt in opt['datasets'].items():
        for root_key in ('dataroot_gt', 'dataroot_lq'):
            if root_key in dataset_opt:
                assert dataset_opt[root_key].startswith('datasets/'), (phase, root_key)
        dataset_opt = fixture_dataset(dataset_opt, scale, tmp_path)
        dataset_opt.update(phase=phase.split('_')[0], scale=scale)
        dataset = build_dataset(dataset_opt)
        item = dataset[0]
        assert item['gt'].shape[1:] == (item['lq'].shape[1] * scale, item['lq'].shape[2] * scale)
        if dataset_opt['phase'] == 'train':
            assert item['gt'].shape[1] == dataset_opt['gt_size']
            assert dataset_opt['prefetch_mode'] is None  # cuda prefetch would stop CPU runs

    # metrics: Y-channel PSNR/SSIM with crop_border = scale
    metrics = opt['val']['metrics']
    assert {m['type'] for m in metrics.values()} == {'calculate_psnr', 'calculate_ssim'}
    for metric in metrics.values():
        assert METRIC_REGISTRY.get(metric['type'])
        assert metric['crop_border'] == scale and metric['test_y_channel'] is True

    if is_train:
        train = opt['train']
        build_loss(copy.deepcopy(dict(train['pixel_opt'])))
        assert train['optim_g']['type'] == 'Adam' and list(train['optim_g']['betas']) == [0.9, 0.99]
        assert train['scheduler']['type'] == 'MultiStepLR' and train['scheduler']['gamma'] == 0.5
        assert max(train['scheduler']['milestones']) < train['total_iter']
        if 'distill_opt' in train:
            loss = {k: v for k, v in train['distill_opt'].items() if k not in DISTILL_KEYS}
            build_loss(loss)
    else:
        assert opt['path']['pretrain_network_g'].startswith('experiments/')


# ------------------------------------------------------------------------------------- paper settings
def _opts(prefix):
    return {os.path.basename(p): load(p) for p in OPTION_FILES if os.path.basename(p).startswith(prefix)}


def test_dvmsr_paper_settings():
    opts = _opts('train_dvmsr')
    teacher = opts['train_dvmsr_teacher_x4.yml']
    assert teacher['network_g']['embed_dim'] == 192 and list(teacher['network_g']['depths']) == [2] * 8
    scratch = opts['train_dvmsr_x4_scratch.yml']
    assert scratch['model_type'] == 'SRModel'
    assert scratch['network_g']['embed_dim'] == 60 and list(scratch['network_g']['depths']) == [2] * 4
    expected = {  # file: (position, loss, L_dis : L1)
        'train_dvmsr_x4_distill.yml': ('end', 'L1Loss', 1.0),
        'train_dvmsr_x4_distill_5to1.yml': ('end', 'L1Loss', 5.0),
        'train_dvmsr_x4_distill_mid.yml': ('mid', 'L1Loss', 1.0),
        'train_dvmsr_x4_distill_mid_5to1.yml': ('mid', 'L1Loss', 5.0),
        'train_dvmsr_x4_distill_mid_l2.yml': ('mid', 'MSELoss', 1.0),
    }
    for name, opt in opts.items():
        data = opt['datasets']['train']
        assert data['dataroot_gt'] == 'datasets/DF2K/DF2K_HR_sub.lmdb'
        assert data['dataroot_lq'] == 'datasets/DF2K/DF2K_LR_bicubic_X4_sub.lmdb'
        assert data['gt_size'] == 256 and data['batch_size_per_gpu'] * 8 == 128
        assert opt['datasets']['val']['dataroot_gt'] == 'datasets/benchmark/Set5/HR'
        train = opt['train']
        assert train['optim_g']['lr'] == 2e-4 and train['total_iter'] == 500000
        assert list(train['scheduler']['milestones']) == [250000, 400000, 450000, 475000]
        if name in expected:
            position, loss, weight = expected[name]
            assert opt['model_type'] == 'DistillationModel'
            assert opt['network_g'] == scratch['network_g'] and opt['network_t'] == teacher['network_g']
            assert opt['path']['pretrain_network_t'] == f"experiments/{teacher['name']}/models/net_g_latest.pth"
            distill = train['distill_opt']
            assert (distill['position'], distill['type'], distill['loss_weight']) == (position, loss, weight)
            assert train['pixel_opt']['loss_weight'] == 1.0
    assert set(expected) <= set(opts)


def test_mma_paper_settings():
    opts = _opts('train_mma')
    for s in (2, 3, 4):
        pre, fine = opts[f'train_mma_x{s}_pretrain.yml'], opts[f'train_mma_x{s}_finetune.yml']
        tiny = opts[f'train_mma_t_x{s}.yml']
        assert pre['datasets']['train']['type'] == 'ImageNetPretrainDataset'
        assert fine['datasets']['train']['dataroot_lq'] == f'datasets/DF2K/DF2K_LR_bicubic_X{s}_sub.lmdb'
        for opt in (pre, fine, tiny):
            assert opt['datasets']['train']['gt_size'] == 64 * s  # LR patch 64 (official option files)
            assert opt['datasets']['train']['batch_size_per_gpu'] * 4 == 64  # paper: 64 on 4 GPUs
            assert opt['train']['ema_decay'] == 0.999
        assert pre['network_g'] == fine['network_g'] == {'type': 'MMA_B', 'upscale': s}
        assert tiny['network_g'] == {'type': 'MMA_T', 'upscale': s}
        assert (pre['train']['optim_g']['lr'], pre['train']['total_iter']) == (2e-4, 800000)
        assert list(pre['train']['scheduler']['milestones']) == [300000, 500000, 650000, 700000, 750000]
        assert (fine['train']['optim_g']['lr'], fine['train']['total_iter']) == (1e-5, 250000)
        assert list(fine['train']['scheduler']['milestones']) == [125000, 200000, 225000, 240000]
        assert fine['path']['pretrain_network_g'] == f"experiments/{pre['name']}/models/net_g_latest.pth"
        for test_name, train_opt in ((f'test_mma_x{s}.yml', fine), (f'test_mma_t_x{s}.yml', tiny)):
            test = load(os.path.join('options', test_name))
            assert test['network_g'] == train_opt['network_g']
            assert test['path']['pretrain_network_g'] == f"experiments/{train_opt['name']}/models/net_g_latest.pth"
            sets = [d['name'] for d in test['datasets'].values()]
            assert sets == ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']
            for d in test['datasets'].values():
                assert d['dataroot_gt'] == f"datasets/benchmark/{d['name']}/HR"
                assert d['dataroot_lq'] == f"datasets/benchmark/{d['name']}/LR_bicubic/X{s}"


@pytest.mark.parametrize('path', [p for p in OPTION_FILES if 'distill' in p])
def test_distillation_options_build_the_model(path, tmp_path):
    """The file's distill_opt over narrowed networks (8 channels; depths kept, so taps resolve as written)."""
    opt = load(path)
    teacher = build_network(dict(opt['network_t'], embed_dim=8))
    teacher_path = tmp_path / 'teacher.pth'
    torch.save({'params_ema': teacher.state_dict()}, teacher_path)
    (tmp_path / 'models').mkdir()
    (tmp_path / 'training_states').mkdir()
    opt = dict(opt, is_train=True, dist=False, num_gpu=0, rank=0, world_size=1)
    opt['network_g'] = dict(opt['network_g'], embed_dim=6)
    opt['network_t'] = dict(opt['network_t'], embed_dim=8)
    opt['path'] = dict(opt['path'], pretrain_network_t=str(teacher_path), models=str(tmp_path / 'models'),
                       training_states=str(tmp_path / 'training_states'))
    opt['train'] = copy.deepcopy(dict(opt['train']))
    opt['train']['distill_opt']['probe_size'] = 8
    model = build_model(opt)
    if opt['train']['distill_opt']['position'] == 'mid':
        assert model.taps_g.names == [f'layers.{i}' for i in range(4)]
        assert model.taps_t.names == [f'layers.{i}' for i in (1, 3, 5, 7)]
    else:
        assert model.taps_g.names == model.taps_t.names == ['forward_features']
    assert all(isinstance(m, torch.nn.Conv2d) for m in model.adapters.maps)  # 6 -> 8 channels
