"""The ``basicsr`` command: errors, and a tiny CPU train -> auto-resume -> test cycle through BasicSR."""
import argparse
import importlib
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch
import yaml

from dvmsr_mma.cli import COMMANDS, main

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



REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = {'torch', 'basicsr', 'numba', 'torchvision', 'cv2'}
# the ``basicsr`` console script (setup.py's entry point), reporting what it imported when it answered
LAUNCH = """
import json, os, sys
from dvmsr_mma_cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
with open(os.environ['REPORT'], 'w') as f:
    json.dump({'code': code, 'imported': sorted({m.split('.')[0] for m in sys.modules})}, f)
"""


def launch(args, tmp_path):
    """Run the console script's code in a fresh interpreter; (exit code, top-level modules imported, stdout,
    stderr)."""
    report = tmp_path / 'report.json'
    out = subprocess.run([sys.executable, '-c', LAUNCH, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, 'REPORT': str(report)})
    result = json.loads(report.read_text())
    return result['code'], set(result['imported']), out.stdout, out.stderr


def test_console_script_is_the_launcher():
    """The installed ``basicsr`` must be the launcher that defers the package's import (a reinstall picks it up)."""
    with open(os.path.join(REPO, 'setup.py'), encoding='utf-8') as f:
        assert "'basicsr = dvmsr_mma_cli:main'" in f.read()


@pytest.mark.parametrize('args, code, says', [
    (['--help'], 0, 'commands:'),
    *[([command, '--help'], 0, f'usage: basicsr {"prep" if command in ("prep", "lmdb") else command}')
      for command in COMMANDS],
    (['prep', 'make_lr', '--help'], 0, '--compression-level LEVEL'),
    (['trian'], 2, "invalid choice: 'trian'"),
    (['infer', '--tile', 'x'], 2, "basicsr infer: error: argument --tile: invalid int value: 'x'"),
    (['infer', '-i', 'in', '-o', 'out'], 2, 'basicsr infer: error: give --weights FILE'),
    (['train', '-opt', 'missing.yml'], 2, 'basicsr train: error: -opt: no such option file: missing.yml'),
    (['check', '-opt', 'missing.yml'], 2, 'basicsr check: error: -opt: no such option file: missing.yml'),
    (['demo', '--iters', '0'], 2, 'basicsr demo: error: --iters must be positive, got 0'),
    (['bench', '--arch', 'DVMSR', '--runs', '0'], 2, 'basicsr bench: error: --runs must be >= 1'),
])
def test_help_and_argument_errors_import_no_torch(args, code, says, tmp_path):
    """``basicsr --help``, ``basicsr COMMAND --help`` and argument errors answer from the parsers alone: no torch,
    basicsr, numba or OpenCV is imported (importing the package took 3-5 s; this answers in well under 0.5 s)."""
    got, imported, out, err = launch(args, tmp_path)
    assert got == code
    assert says in (out if code == 0 else err)
    assert not imported & HEAVY, sorted(imported & HEAVY)
    if code:
        assert len(err.strip().splitlines()) == 1, err


def test_a_command_that_runs_imports_the_package(tmp_path):
    """Once the arguments are good, the package's __init__ runs (registries filled): BasicSR's own network builds."""
    got, imported, out, err = launch(['bench', '--arch', 'SRVGGNetCompact', '--scale', '2', '--size', '8x8',
                                      '--runs', '1', '--warmup', '0', '--no-flops', '--json'], tmp_path)
    assert got == 0, err
    assert {'torch', 'basicsr'} <= imported
    assert json.loads(out.strip().splitlines()[-1])['params'] > 0


def all_parsers():
    """(command, parser) for every ``basicsr`` subcommand and every ``prep`` step."""
    from datasets_prep.cli import _parser
    parsers = [(name, importlib.import_module(module).parser()) for name, module in COMMANDS.items()
               if hasattr(importlib.import_module(module), 'parser')]
    prep = _parser('basicsr prep')
    steps = next(a for a in prep._actions if isinstance(a, argparse._SubParsersAction)).choices
    return parsers + [(f'prep {step}', p) for step, p in steps.items()]


def test_one_spelling_per_option_across_commands():
    """An option that means one thing (its dest) is spelled one way in every command; old spellings stay as aliases
    after it (make_lmdb's --compress-level)."""
    spellings = {}
    for command, parser in all_parsers():
        for action in parser._actions:
            if action.option_strings and action.dest != 'help':
                name = next((o for o in action.option_strings if o.startswith('--')), action.option_strings[0])
                spellings.setdefault(action.dest, {}).setdefault(name, []).append(command)
    assert {dest: s for dest, s in spellings.items() if len(s) > 1} == {}
    assert 'compression_level' in spellings and 'compress_level' not in spellings


def test_old_option_spelling_still_works():
    from datasets_prep.cli import _parser
    for flag in ('--compression-level', '--compress-level'):
        args = _parser('basicsr prep').parse_args(['make_lmdb', '--input', 'a', '--output', 'b.lmdb', flag, '5'])
        assert args.compression_level == 5


def test_help_shows_every_default():
    """Each option with a default says it in --help (argparse's formatter shows none)."""
    for command, parser in all_parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert 'default' in formatter._get_help_string(action), (command, action.dest)
    demo = ' '.join(importlib.import_module('dvmsr_mma.cli.demo').parser().format_help().split())
    assert 'training iterations (default: 1000)' in demo and '(default: demo_output)' in demo
    bench = ' '.join(importlib.import_module('dvmsr_mma.cli.bench').parser().format_help().split())
    assert 'timed warm runs (median reported) (default: 10)' in bench and '(default 256x256)' not in bench

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
