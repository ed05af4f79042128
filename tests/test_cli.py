"""The ``basicsr`` command: errors, and a tiny CPU train -> auto-resume -> test cycle through BasicSR."""
import os
import subprocess
import sys

import cv2
import pytest
import torch
import yaml

from dvmsr_mma.cli import main

SCALE = 2


def basicsr(args, cwd):
    return subprocess.run([sys.executable, '-m', 'dvmsr_mma', *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize('argv, message', [
    (['trian'], "invalid choice: 'trian'"),
    (['train'], 'the following arguments are required: -opt'),
    (['train', '-opt', 'missing.yml'], 'no such option file: missing.yml'),
    (['test', '-opt', 'missing.yml'], 'no such option file: missing.yml'),
])
def test_bad_command_line_is_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_option_file_without_required_keys(tmp_path, capsys):
    opt = tmp_path / 'opt.yml'
    opt.write_text('name: x\nmodel_type: SRModel\n')
    assert main(['train', '-opt', str(opt)]) == 2
    assert 'has no "datasets" option' in capsys.readouterr().err


def test_help_lists_subcommands():
    result = basicsr(['--help'], cwd=os.getcwd())
    assert result.returncode == 0
    for command in ('train', 'test', 'demo', 'prep', 'lmdb'):
        assert f'  {command} ' in result.stdout


def _tiny_options(tmp_path, total_iter, write_pairs):
    train_hr, train_lr = write_pairs(tmp_path / 'train', 4, 64, seed=0)
    val_hr, val_lr = write_pairs(tmp_path / 'val', 2, 48, seed=1)
    network = {'type': 'SRVGGNetCompact', 'num_feat': 8, 'num_conv': 2, 'upscale': SCALE}
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE, 'test_y_channel': True}}
    train = {
        'name': 'tiny',
        'model_type': 'SRModel',
        'scale': SCALE,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': train_hr, 'dataroot_lq': train_lr,
                'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
                'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1, 'prefetch_mode': None
            },
            'val': {
                'name': 'val', 'type': 'PairedImageDataset', 'dataroot_gt': val_hr, 'dataroot_lq': val_lr,
                'io_backend': {'type': 'disk'}
            },
        },
        'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},
            'total_iter': total_iter,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {'val_freq': 4, 'save_img': False, 'metrics': metrics},
        'logger': {'print_freq': 2, 'save_checkpoint_freq': 4, 'use_tb_logger': False},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }
    test = {
        'name': 'tiny_test',
        'model_type': 'SRModel',
        'scale': SCALE,
        'num_gpu': 0,
        'datasets': {'test_1': train['datasets']['val']},
        'network_g': network,
        'path': {'pretrain_network_g': 'experiments/tiny/models/net_g_latest.pth', 'param_key_g': 'params_ema',
                 'strict_load_g': True},
        'val': {'save_img': True, 'suffix': 'sr', 'metrics': metrics},
    }
    paths = tmp_path / 'train.yml', tmp_path / 'test.yml'
    for path, opt in zip(paths, (train, test)):
        path.write_text(yaml.safe_dump(opt))
    return paths


def _latest_log(run_dir):
    logs = sorted(p for p in os.listdir(run_dir) if p.endswith('.log'))
    with open(os.path.join(run_dir, logs[-1])) as f:
        return f.read()


def test_train_resume_test_cycle_on_cpu(tmp_path, write_pairs):
    train_yml, test_yml = _tiny_options(tmp_path, 4, write_pairs)
    run_dir = tmp_path / 'experiments' / 'tiny'

    result = basicsr(['train', '-opt', str(train_yml)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / 'models' / 'net_g_4.pth').is_file()
    assert (run_dir / 'training_states' / '4.state').is_file()
    assert 'psnr' in _latest_log(run_dir)

    # --auto_resume continues the same run (not an archived copy) from its 4.state up to 8 iterations
    result = basicsr(['train', '-opt', str(train_yml), '--auto_resume', '--force_yml', 'train:total_iter=8'],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in os.listdir(tmp_path / 'experiments') if 'archived' in p]
    assert 'Resuming training from epoch' in _latest_log(run_dir)
    assert (run_dir / 'training_states' / '8.state').is_file()
    weights = torch.load(run_dir / 'models' / 'net_g_latest.pth', weights_only=True)
    assert set(weights) == {'params', 'params_ema'}

    result = basicsr(['test', '-opt', str(test_yml)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    images = sorted(os.listdir(tmp_path / 'results' / 'tiny_test' / 'visualization' / 'val'))
    assert images == ['0000_sr.png', '0001_sr.png']
    assert cv2.imread(str(tmp_path / 'results' / 'tiny_test' / 'visualization' / 'val' / images[0])).shape == (48, 48,
                                                                                                               3)


def test_unknown_network_type_is_one_line(tmp_path, write_pairs):
    train_yml, _ = _tiny_options(tmp_path, 1, write_pairs)
    opt = yaml.safe_load(train_yml.read_text())
    opt['network_g']['type'] = 'SRVGGNetCompat'
    train_yml.write_text(yaml.safe_dump(opt))
    result = basicsr(['train', '-opt', str(train_yml)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "basicsr train: error: network_g.type: 'SRVGGNetCompat' is not registered in BasicSR's arch registry; "
        'did you mean SRVGGNetCompact?')
    assert 'Traceback' not in result.stderr
