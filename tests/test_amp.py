"""Mixed precision (``train.amp``, ``val.amp``) of SRModel and DistillationModel: bf16 and fp16 steps train,
fp16's GradScaler state survives a training-state round trip, and without the options a step is BasicSR's."""
import copy
import logging

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.models import build_model
from train_runs import SCALE, tiny_dvmsr, write_options

from dvmsr_mma.cli import main

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.cuda)]


def model_opt(tmp_path, device='cpu', distill=False, **train):
    for folder in ('models', 'training_states'):
        (tmp_path / folder).mkdir(exist_ok=True)
    opt = {
        'name': 'amp', 'model_type': 'SRModel', 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1,
        'num_gpu': 1 if device == 'cuda' else 0, 'scale': SCALE, 'datasets': {'train': {'gt_size': 16}},
        'network_g': tiny_dvmsr(drop_path_rate=0.),
        'path': {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'training_states'),
                 'resume_state': None},
        'train': {'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 2e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **train},
    }
    if distill:
        torch.manual_seed(1)
        torch.save({'params_ema': build_network(tiny_dvmsr(12, 0.)).state_dict()}, tmp_path / 'teacher.pth')
        opt.update(model_type='DistillationModel', network_t=tiny_dvmsr(12, 0.))
        opt['path']['pretrain_network_t'] = str(tmp_path / 'teacher.pth')
        opt['train']['distill_opt'] = {'position': 'end', 'type': 'L1Loss', 'loss_weight': 0.5}
    return opt


def batch(seed, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand(2, 3, 8, 8, generator=g).to(device),
            'gt': torch.rand(2, 3, 8 * SCALE, 8 * SCALE, generator=g).to(device)}


def train(model, steps, device='cpu', seed=0):
    logs = []
    for i in range(steps):
        model.feed_data(batch(seed + i, device))
        model.optimize_parameters(i + 1)
        logs.append(model.get_current_log())
    return logs


def weights(model):
    return {k: v.detach().clone() for k, v in model.get_bare_model(model.net_g).state_dict().items()}


@pytest.mark.parametrize('distill', [False, True], ids=['SRModel', 'DistillationModel'])
def test_bf16_training_changes_weights_with_finite_losses(tmp_path, distill):
    torch.manual_seed(0)
    model = build_model(model_opt(tmp_path, distill=distill, amp='bf16'))
    before = weights(model)
    logs = train(model, 3)
    assert model.output.dtype == torch.bfloat16  # the forward ran under autocast
    assert all(torch.isfinite(torch.tensor(list(log.values()))).all() for log in logs)
    assert set(logs[0]) == ({'l_pix', 'l_dis', 'l_total'} if distill else {'l_pix'})
    after = weights(model)
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())  # master weights fp32
    if distill:  # the teacher runs under the step's autocast as well: its features arrive in bf16
        seen = []
        model.net_t.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        train(model, 1)
        assert seen == [torch.bfloat16]


def test_without_amp_the_step_is_basicsr_s(tmp_path):
    """BasicSR 1.4.2's SRModel.optimize_parameters, written out: the patched step must match it bit for bit."""
    torch.manual_seed(0)
    ours = build_model(model_opt(tmp_path))
    reference = copy.deepcopy(ours)
    for i in range(3):
        ours.feed_data(batch(i))
        ours.optimize_parameters(i + 1)
        reference.feed_data(batch(i))
        reference.optimizer_g.zero_grad()
        reference.output = reference.net_g(reference.lq)
        l_total = 0
        l_pix = reference.cri_pix(reference.output, reference.gt)
        l_total += l_pix
        l_total.backward()
        reference.optimizer_g.step()
        reference.model_ema(decay=reference.ema_decay)
    for net in ('net_g', 'net_g_ema'):
        for k, v in getattr(reference, net).state_dict().items():
            assert torch.equal(v, getattr(ours, net).state_dict()[k]), f'{net}.{k}'


def _fp16_supported(device):
    try:
        with torch.autocast(device, dtype=torch.float16):
            return torch.nn.Linear(2, 2).to(device)(torch.ones(1, 2, device=device)).dtype == torch.float16
    except (RuntimeError, AssertionError):
        return False


@pytest.mark.parametrize('device', DEVICES)
def test_fp16_trains_with_grad_scaler(tmp_path, device):
    if not _fp16_supported(device):
        pytest.skip(f'fp16 autocast is not supported on {device} by this torch')
    torch.manual_seed(0)
    model = build_model(model_opt(tmp_path, device, amp='fp16'))
    assert model.grad_scaler.is_enabled()
    before = weights(model)
    logs = train(model, 3, device)
    assert model.output.dtype == torch.float16
    assert all(torch.isfinite(torch.tensor(list(log.values()))).all() for log in logs)
    after = weights(model)
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_grad_scaler_state_round_trips_through_the_training_state(tmp_path):
    """CPU-only check of what fp16 resume needs: the scaler's scale and growth tracker are saved and restored."""
    opt = model_opt(tmp_path, amp='fp16')
    model = build_model(opt)
    train(model, 2)  # the growth tracker counts the two good steps
    model.grad_scaler.update(1024.0)  # and a scale other than the default
    model.save_training_state(epoch=0, current_iter=3)
    state = torch.load(tmp_path / 'training_states' / '3.state', weights_only=False)
    assert state['grad_scaler']['scale'] == 1024.0

    resumed = build_model(copy.deepcopy(opt))
    assert resumed.grad_scaler.state_dict() != model.grad_scaler.state_dict()
    resumed.resume_training(state)
    assert resumed.grad_scaler.state_dict() == model.grad_scaler.state_dict()
    # bf16 / fp32 runs have no scaler state
    (tmp_path / 'plain').mkdir()
    plain = build_model(model_opt(tmp_path / 'plain'))
    plain.save_training_state(epoch=0, current_iter=3)
    assert 'grad_scaler' not in torch.load(tmp_path / 'plain' / 'training_states' / '3.state', weights_only=False)


def test_val_amp_tests_in_bf16_and_returns_fp32(tmp_path):
    torch.manual_seed(0)
    opt = model_opt(tmp_path)
    model = build_model(opt)
    model.feed_data(batch(0))
    model.test()
    fp32 = model.output
    opt['val'] = {'amp': 'bf16'}
    model.opt = opt
    model.test()
    assert model.output.dtype == torch.float32
    assert not torch.equal(model.output, fp32)  # computed in bf16 ...
    assert torch.allclose(model.output, fp32, atol=0.05)  # ... close to the fp32 output


@pytest.mark.parametrize('train, val, model_type, message', [
    ({'amp': 'fp32'}, {}, 'SRModel', "train.amp: 'fp32' is not one of bf16, fp16, ~"),
    ({'nan_policy': 'ignore'}, {}, 'SRModel', "train.nan_policy: 'ignore' is not one of stop, skip, ~"),
    ({'nan_skip_limit': 0}, {}, 'SRModel', 'train.nan_skip_limit: 0 is less than 1'),
    ({}, {'amp': 'half'}, 'SRModel', "val.amp: 'half' is not one of bf16, fp16, ~"),
    ({'amp': 'bf16'}, {}, 'SRGANModel', 'train.amp: SRGANModel has its own optimize_parameters, which ignores it'),
])
def test_bad_amp_options_are_one_line(tmp_path, write_pairs, monkeypatch, capsys, train, val, model_type, message):
    yml = write_options(tmp_path, write_pairs, **train)
    opt = yaml.safe_load(yml.read_text())
    opt['model_type'] = model_type
    if model_type == 'SRGANModel':  # what a GAN model needs besides (the schema's own rules)
        opt['network_d'] = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8}
        opt['train'].update(optim_d={'type': 'Adam', 'lr': 1e-4}, gan_opt={'type': 'GANLoss', 'gan_type': 'vanilla'})
    if val:
        opt['val'] = {'val_freq': 4, 'save_img': False, **val}
    yml.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger('basicsr'), 'handlers', [])
    assert main(['train', '-opt', str(yml)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith('basicsr train: error: ') and message in lines[-1], lines
    assert not (tmp_path / 'experiments').exists()  # refused before the run folder exists
