"""DistillationModel: frozen teacher, taps (output / end / mid), adapters in the resume state, CLI runs."""
import copy
import os
import subprocess
import sys

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY

from dvmsr_mma.utils.errors import OptionError

SCALE = 2
STUDENT = {'type': 'SRVGGNetCompact', 'num_feat': 8, 'num_conv': 2, 'upscale': SCALE}
TEACHER = {'type': 'SRVGGNetCompact', 'num_feat': 12, 'num_conv': 4, 'upscale': SCALE}
has_dvmsr = pytest.mark.skipif('DVMSR' not in ARCH_REGISTRY, reason='DVMSR arch not in the tree yet')


def tiny_dvmsr(embed_dim, depths):
    return {'type': 'DVMSR', 'embed_dim': embed_dim, 'depths': depths, 'upscale': SCALE, 'd_state': 4,
            'drop_path_rate': 0.}


def save_teacher(tmp_path, network, key='params_ema', seed=0):
    torch.manual_seed(seed)
    net = build_network(copy.deepcopy(network))
    path = tmp_path / 'teacher.pth'
    torch.save({key: net.state_dict()}, path)
    return str(path), net.state_dict()


def model_opt(tmp_path, teacher_path, distill_opt, student=STUDENT, teacher=TEACHER, ema=0.0):
    models, states = tmp_path / 'models', tmp_path / 'training_states'
    models.mkdir(exist_ok=True)
    states.mkdir(exist_ok=True)
    return {
        'name': 'distill', 'model_type': 'DistillationModel', 'is_train': True, 'dist': False, 'num_gpu': 0,
        'scale': SCALE, 'rank': 0, 'world_size': 1,
        'datasets': {'train': {'gt_size': 32}},
        'network_g': copy.deepcopy(student), 'network_t': copy.deepcopy(teacher),
        'path': {'pretrain_network_t': teacher_path, 'models': str(models), 'training_states': str(states),
                 'resume_state': None},
        'train': {
            'ema_decay': ema,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
            'distill_opt': copy.deepcopy(distill_opt),
        },
    }


def batch(seed=0, n=2, size=16):
    g = torch.Generator().manual_seed(seed)
    lq = torch.rand(n, 3, size, size, generator=g)
    return {'lq': lq, 'gt': torch.rand(n, 3, size * SCALE, size * SCALE, generator=g)}


def train_steps(model, steps, seed=0):
    for i in range(steps):
        model.feed_data(batch(seed + i))
        model.optimize_parameters(i + 1)


def test_missing_teacher_path_is_an_option_error(tmp_path):
    opt = model_opt(tmp_path, None, {'position': 'output', 'type': 'L1Loss', 'loss_weight': 1.0})
    with pytest.raises(OptionError, match=r'path\.pretrain_network_t is not set'):
        build_model(opt)
    opt = model_opt(tmp_path, str(tmp_path / 'nope.pth'), {'position': 'output', 'type': 'L1Loss'})
    with pytest.raises(OptionError, match=r'path\.pretrain_network_t: no such file'):
        build_model(opt)


def test_teacher_frozen_not_optimized_not_saved(tmp_path):
    path, weights = save_teacher(tmp_path, TEACHER, key='params')  # no params_ema: falls back to params
    model = build_model(model_opt(tmp_path, path, {'position': 'mid', 'layers': [0, 2], 'type': 'L1Loss',
                                                   'loss_weight': 1.0}, ema=0.9))
    teacher = model.net_t
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, weights[k])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimized & {id(p) for p in teacher.parameters()}
    # student width 8 -> teacher width 12 at both taps: two 1x1 adapters, trained in optimizer_g
    adapter_params = list(model.adapters.parameters())
    assert len(adapter_params) == 4 and {id(p) for p in adapter_params} <= optimized

    before = copy.deepcopy(teacher.state_dict())
    train_steps(model, 3)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not teacher.training
    assert set(model.get_current_log()) == {'l_pix', 'l_dis', 'l_total'}

    model.save(epoch=0, current_iter=3)
    saved = torch.load(tmp_path / 'models' / 'net_g_3.pth', weights_only=True)
    assert set(saved) == {'params', 'params_ema'}
    student_keys = set(model.net_g.state_dict())
    assert set(saved['params']) == student_keys and set(saved['params_ema']) == student_keys
    assert sorted(os.listdir(tmp_path / 'models')) == ['net_g_3.pth']


def test_adapters_saved_in_and_restored_from_resume_state(tmp_path):
    path, _ = save_teacher(tmp_path, TEACHER)
    distill = {'position': 'mid', 'layers': ['body.2'], 'layers_t': ['body.4'], 'type': 'MSELoss',
               'loss_weight': 1.0}
    model = build_model(model_opt(tmp_path, path, distill))
    train_steps(model, 2)
    model.save_training_state(epoch=0, current_iter=2)
    state = torch.load(tmp_path / 'training_states' / '2.state', weights_only=False)
    saved_adapters = state['distillation']['adapters']
    assert set(saved_adapters) == {'maps.0.weight', 'maps.0.bias'}
    assert state['distillation']['pretrain_network_t'] == path

    # BasicSR's check_resume points pretrain_network_t at a net_t_<iter>.pth that is never written
    opt = model_opt(tmp_path, str(tmp_path / 'models' / 'net_t_2.pth'), distill)
    opt['path']['resume_state'] = str(tmp_path / 'training_states' / '2.state')
    opt['path']['param_key_t'] = 'params'
    resumed = build_model(opt)
    resumed.net_g.load_state_dict(model.net_g.state_dict())
    resumed.resume_training(state)
    assert resumed.teacher_path == path and resumed.teacher_param_key == 'params_ema'
    for k, v in resumed.adapters.state_dict().items():
        assert torch.equal(v, saved_adapters[k])
    for k, v in resumed.net_t.state_dict().items():
        assert torch.equal(v, model.net_t.state_dict()[k])
    # the next step is the same as the uninterrupted run's (optimizer state of adapters restored too)
    train_steps(model, 1, seed=10)
    train_steps(resumed, 1, seed=10)
    for k, v in resumed.adapters.state_dict().items():
        assert torch.allclose(v, model.adapters.state_dict()[k], atol=1e-7)
    assert resumed.get_current_log() == pytest.approx(model.get_current_log())


def test_output_distillation_from_own_copy_is_zero(tmp_path):
    path, weights = save_teacher(tmp_path, STUDENT)
    opt = model_opt(tmp_path, path, {'position': 'output', 'type': 'L1Loss', 'loss_weight': 1.0},
                    teacher=STUDENT)
    model = build_model(opt)
    model.net_g.load_state_dict(weights)
    assert not list(model.adapters.parameters())
    model.feed_data(batch())
    model.optimize_parameters(1)
    log = model.get_current_log()
    assert log['l_dis'] == 0.0
    assert log['l_total'] == pytest.approx(log['l_pix'])


@pytest.mark.parametrize('loss', ['L1Loss', 'MSELoss'])
@pytest.mark.parametrize('distill', [
    {'position': 'output'},
    {'position': 'end', 'layers': ['body.6'], 'layers_t': ['body.10']},  # SRVGGNetCompact: no forward_features
    {'position': 'mid', 'layers': [1, 3]},
    {'position': 'mid'},  # all student blocks, teacher blocks spread evenly
])
def test_positions_and_losses_train(tmp_path, distill, loss):
    path, _ = save_teacher(tmp_path, TEACHER)
    model = build_model(model_opt(tmp_path, path, dict(distill, type=loss, loss_weight=0.5)))
    train_steps(model, 2)
    log = model.get_current_log()
    assert set(log) == {'l_pix', 'l_dis', 'l_total'}
    assert log['l_dis'] > 0 and log['l_total'] == pytest.approx(log['l_pix'] + log['l_dis'], rel=1e-5)


@has_dvmsr
@pytest.mark.parametrize('distill', [
    {'position': 'end', 'type': 'L1Loss'},  # forward_features of both, 8 -> 12 channels
    {'position': 'mid', 'type': 'MSELoss'},  # RSSBs 0, 1 of 2 <-> 1, 3 of 4, (b, l, c) tokens
])
def test_dvmsr_taps(tmp_path, distill):
    student, teacher = tiny_dvmsr(8, [1, 1]), tiny_dvmsr(12, [1, 1, 1, 1])
    path, _ = save_teacher(tmp_path, teacher)
    model = build_model(model_opt(tmp_path, path, dict(distill, loss_weight=1.0), student=student, teacher=teacher))
    if distill['position'] == 'mid':
        assert model.taps_t.names == ['layers.1', 'layers.3']
    else:
        assert model.taps_g.names == ['forward_features']
    assert len(list(model.adapters.parameters())) == 2 * len(model.taps_g.names)  # weight + bias per tap
    train_steps(model, 1)
    assert model.get_current_log()['l_dis'] > 0


@pytest.mark.parametrize('distill, message', [
    ({'position': 'middle'}, 'position'),
    ({'position': 'mid', 'layers': [7]}, 'out of range'),
    ({'position': 'mid', 'layers': ['body.99']}, "no module 'body.99'"),
    ({'position': 'mid', 'layers': [0, 1], 'layers_t': [0]}, '2 student layers but 1 layers_t'),
    ({'position': 'end'}, 'has no forward_features'),
])
def test_bad_distill_options(tmp_path, distill, message):
    path, _ = save_teacher(tmp_path, TEACHER)
    with pytest.raises(OptionError, match=message):
        build_model(model_opt(tmp_path, path, dict(distill, type='L1Loss')))


# ------------------------------------------------------------------------------- through `basicsr train`
def test_cli_train_and_auto_resume(tmp_path, write_pairs):
    """2 iterations, then --auto_resume to 4: the teacher comes back from the state's record although
    check_resume pointed path.pretrain_network_t at a net_t_2.pth that does not exist."""
    teacher_path, _ = save_teacher(tmp_path, TEACHER)
    train_hr, train_lr = write_pairs(tmp_path / 'train', 2, 64, seed=0)
    val_hr, val_lr = write_pairs(tmp_path / 'val', 1, 32, seed=1)
    opt = {
        'name': 'distill', 'model_type': 'DistillationModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': train_hr, 'dataroot_lq': train_lr,
                      'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
                      'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1,
                      'prefetch_mode': None},
            'val': {'name': 'val', 'type': 'PairedImageDataset', 'dataroot_gt': val_hr, 'dataroot_lq': val_lr,
                    'io_backend': {'type': 'disk'}},
        },
        'network_g': STUDENT, 'network_t': TEACHER,
        'path': {'pretrain_network_g': None, 'pretrain_network_t': teacher_path, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},
            'total_iter': 2, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
            'distill_opt': {'position': 'mid', 'layers': [2], 'type': 'L1Loss', 'loss_weight': 1.0},
        },
        'val': {'val_freq': 2, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }
    yml = tmp_path / 'train.yml'
    yml.write_text(yaml.safe_dump(opt))
    run = [sys.executable, '-m', 'dvmsr_mma', 'train', '-opt', str(yml)]
    result = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / 'experiments' / 'distill'
    assert 'distillation' in torch.load(run_dir / 'training_states' / '2.state', weights_only=False)
    result = subprocess.run(run + ['--auto_resume', '--force_yml', 'train:total_iter=4'], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted(p for p in os.listdir(run_dir) if p.endswith('.log'))
    log = (run_dir / logs[-1]).read_text()
    assert 'Resuming training from epoch' in log and 'l_dis: ' in log and 'l_total: ' in log
    assert 'psnr' in log
    assert not [p for p in os.listdir(run_dir / 'models') if 'net_t' in p]
    assert set(torch.load(run_dir / 'models' / 'net_g_latest.pth', weights_only=True)) == {'params', 'params_ema'}
