"""The NaN/Inf guard (``train.nan_policy``): a non-finite loss or gradient never reaches the weights; ``stop``
ends the run with exit 1 and the checkpoints from before, ``skip`` goes on until too many bad steps in a row."""
import os
import re

import pytest
import torch
from basicsr.models import build_model
from test_amp import batch, model_opt, weights
from train_runs import load_net, run_dir, run_train, write_options

from dvmsr_mma.utils.errors import TrainingDiverged


def test_nan_loss_stops_the_run_before_any_bad_checkpoint(tmp_path, write_pairs):
    yml = write_options(tmp_path, write_pairs, total_iter=8, save_freq=4)
    result = run_train(tmp_path, yml, env={'DVMSR_TEST_NAN': '6'})
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if 'non-finite' in line]
    assert len(lines) == 1, lines
    assert re.search(r'iter 6: non-finite loss l_pix = nan \(lr 1\.000e-03\); training stops', lines[0]), lines[0]
    run = run_dir(tmp_path)
    assert sorted(os.listdir(run / 'models')) == ['net_g_4.pth']  # from before iteration 6, no latest
    assert sorted(os.listdir(run / 'training_states')) == ['4.state']
    saved = load_net(run / 'models' / 'net_g_4.pth')
    assert all(torch.isfinite(v).all() for v in saved['params'].values())


def test_skip_policy_goes_on_past_bad_steps(tmp_path, write_pairs):
    yml = write_options(tmp_path, write_pairs, total_iter=6, save_freq=6, nan_policy='skip', nan_skip_limit=3)
    result = run_train(tmp_path, yml, env={'DVMSR_TEST_NAN': '3:2'})  # iterations 3 and 4
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if 'step skipped' in line]
    assert [re.search(r'iter (\d+):', line)[1] for line in skipped] == ['3', '4']
    assert '2 in a row, stops at 3' in skipped[1]
    final = load_net(run_dir(tmp_path) / 'models' / 'net_g_latest.pth')
    assert all(torch.isfinite(v).all() for key in ('params', 'params_ema') for v in final[key].values())


def test_skipped_step_leaves_weights_ema_and_optimizer_alone(tmp_path):
    torch.manual_seed(0)
    model = build_model(model_opt(tmp_path, nan_policy='skip', nan_skip_limit=2))
    model.feed_data(batch(0))
    model.optimize_parameters(1)
    before, ema = weights(model), {k: v.clone() for k, v in model.net_g_ema.state_dict().items()}
    adam_steps = [s['step'].clone() for s in model.optimizer_g.state.values()]
    first = next(model.net_g.parameters())
    handle = first.register_hook(lambda grad: grad * float('inf'))  # finite loss, non-finite gradient
    model.feed_data(batch(1))
    model.optimize_parameters(2)
    assert all(torch.equal(v, weights(model)[k]) for k, v in before.items())
    assert all(torch.equal(v, model.net_g_ema.state_dict()[k]) for k, v in ema.items())
    assert [s['step'] for s in model.optimizer_g.state.values()] == adam_steps
    assert all(p.grad is None or not p.grad.any() for p in model.net_g.parameters())
    with pytest.raises(TrainingDiverged, match=r'iter 3: non-finite gradient of net_g\.conv_first\.weight .*'
                                               r'2 bad steps in a row reached train\.nan_skip_limit: 2'):
        model.feed_data(batch(2))
        model.optimize_parameters(3)
    handle.remove()
    model.feed_data(batch(3))
    model.optimize_parameters(4)  # a good step again
    assert model.nan_guard.bad_in_a_row == 0


@pytest.mark.parametrize('distill', [False, True], ids=['SRModel', 'DistillationModel'])
def test_stop_policy_raises_on_a_non_finite_gradient(tmp_path, distill):
    torch.manual_seed(0)
    model = build_model(model_opt(tmp_path, distill=distill))
    before = weights(model)
    next(model.net_g.parameters()).register_hook(lambda grad: grad * float('nan'))
    model.feed_data(batch(0))
    with pytest.raises(TrainingDiverged, match=r'iter 1: non-finite gradient of net_g\.conv_first\.weight \(the '
                                               r'loss terms are finite\) \(lr 2\.000e-03\); training stops'):
        model.optimize_parameters(1)
    assert all(torch.equal(v, weights(model)[k]) for k, v in before.items())
