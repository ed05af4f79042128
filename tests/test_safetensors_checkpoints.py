"""``.safetensors`` checkpoints in training: ``logger.save_checkpoint_format: safetensors`` writes them (atomically),
``--auto_resume`` finds them, ``basicsr test`` and ``path.pretrain_network_g`` / ``pretrain_network_t`` read them,
plain state dicts from other tools included."""
import logging
import os
import subprocess
import sys

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.models import build_model
from safetensors.torch import load_file, save_file
from test_amp import model_opt
from train_runs import SCALE, load_net, run_dir, run_train, tiny_dvmsr, write_options

from dvmsr_mma.cli import main
from dvmsr_mma.utils import checkpoint_io


def test_checkpoint_layout_round_trips(tmp_path):
    save_dict = {'params': {'a.weight': torch.ones(2, 3), 'b': torch.arange(4)},
                 'params_ema': {'a.weight': torch.zeros(2, 3), 'b': torch.arange(4)}}
    path = tmp_path / 'net_g_3.safetensors'
    checkpoint_io.atomic_safetensors_save(save_dict, str(path))
    assert sorted(load_file(path)) == ['params.a.weight', 'params.b', 'params_ema.a.weight', 'params_ema.b']
    loaded = load_net(path)
    assert loaded.keys() == save_dict.keys()
    for key, state in save_dict.items():
        assert all(torch.equal(loaded[key][name], value) for name, value in state.items())
    plain = tmp_path / 'plain.safetensors'  # another tool's file: one state dict, no param keys
    save_file({'a.weight': torch.ones(2)}, plain)
    assert list(load_net(plain)) == ['a.weight']


def test_interrupted_safetensors_save_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch
    path = tmp_path / 'net_g_latest.safetensors'
    checkpoint_io.atomic_safetensors_save({'params': {'w': torch.ones(2)}}, str(path))

    def interrupted_save(tensors, filename, metadata=None):  # dies half-way, as a kill would
        with open(filename, 'wb') as f:
            f.write(b'\x10\x00partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, 'save_file', interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_io.atomic_safetensors_save({'params': {'w': torch.zeros(2)}}, str(path))
    monkeypatch.undo()
    assert torch.equal(load_net(path)['params']['w'], torch.ones(2))
    assert os.listdir(tmp_path) == ['net_g_latest.safetensors']


def _test_options(folder, write_pairs, weights):
    hr, lr = write_pairs(folder / 'val', 2, 24, seed=1)
    opt = {'name': 'test_run', 'model_type': 'SRModel', 'scale': SCALE, 'num_gpu': 0,
           'datasets': {'test_1': {'name': 'val', 'type': 'PairedImageDataset', 'dataroot_gt': hr,
                                   'dataroot_lq': lr, 'io_backend': {'type': 'disk'}}},
           'network_g': tiny_dvmsr(), 'path': {'pretrain_network_g': str(weights), 'strict_load_g': True},
           'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE}}}}
    path = folder / 'test.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


def test_train_save_auto_resume_test_cycle(tmp_path, write_pairs):
    yml = write_options(tmp_path, write_pairs, total_iter=6, save_freq=4)
    opt = yaml.safe_load(yml.read_text())
    opt['logger']['save_checkpoint_format'] = 'safetensors'
    yml.write_text(yaml.safe_dump(opt))
    result = run_train(tmp_path, yml, env={'DVMSR_TEST_SIGNAL': '5:TERM'})
    assert result.returncode == 143, result.stderr[-3000:]
    models = run_dir(tmp_path) / 'models'
    assert sorted(os.listdir(models)) == ['net_g_4.safetensors', 'net_g_5.safetensors']

    result = run_train(tmp_path, yml, '--auto_resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Resuming training from epoch: 1, iter: 5.' in result.stderr
    assert 'net_g_5.safetensors' in result.stderr  # the networks came from the .safetensors file
    assert sorted(os.listdir(models)) == ['net_g_4.safetensors', 'net_g_5.safetensors', 'net_g_latest.safetensors']
    final = load_net(models / 'net_g_latest.safetensors')
    assert set(final) == {'params', 'params_ema'}

    test_yml = _test_options(tmp_path, write_pairs, models / 'net_g_latest.safetensors')
    result = subprocess.run([sys.executable, '-m', 'dvmsr_mma', 'test', '-opt', str(test_yml)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '# psnr: ' in result.stderr


def test_plain_safetensors_as_pretrained_student_and_teacher(tmp_path):
    torch.manual_seed(3)
    student = build_network(tiny_dvmsr(drop_path_rate=0.)).state_dict()
    teacher = build_network(tiny_dvmsr(12, 0.)).state_dict()
    save_file(student, tmp_path / 'student.safetensors')
    save_file(teacher, tmp_path / 'teacher.safetensors')
    opt = model_opt(tmp_path, distill=True)
    opt['path'].update(pretrain_network_g=str(tmp_path / 'student.safetensors'),
                       pretrain_network_t=str(tmp_path / 'teacher.safetensors'))
    model = build_model(opt)
    for net, expected in ((model.net_g, student), (model.net_g_ema, student), (model.net_t, teacher)):
        assert all(torch.equal(value, expected[name]) for name, value in net.state_dict().items())


def test_unknown_checkpoint_format_is_one_line(tmp_path, write_pairs, monkeypatch, capsys):
    yml = write_options(tmp_path, write_pairs)
    opt = yaml.safe_load(yml.read_text())
    opt['logger']['save_checkpoint_format'] = 'ckpt'
    yml.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger('basicsr'), 'handlers', [])
    assert main(['train', '-opt', str(yml)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "basicsr train: error: logger.save_checkpoint_format: 'ckpt' is not one of pth, safetensors, ~"
