"""Distributed training on CPU with gloo: 2-process ``--launcher pytorch`` (torchrun) and ``--launcher slurm``
runs of ``python -m dvmsr_mma train`` for SRModel and DistillationModel.

Each rank trains on other images (BasicSR's EnlargedSampler splits the set), so weights that are identical on
both ranks after training show that DDP synced the gradients of the student and of the distillation adapters.
Batches come from a DataLoader worker process, as in real runs: it starts after ``init_dist``.
"""
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from basicsr.archs import build_network

from dvmsr_mma.training.compat import first_slurm_host

SCALE = 2
ITERS = 3  # 4 images, batch 1 per rank, 2 ranks: 2 iterations per epoch, so the run crosses an epoch boundary

# ``python -m dvmsr_mma`` (the ``basicsr`` command), with ``build_model`` wrapped only to keep the model; then
# this rank saves its own weights (BasicSR writes checkpoints on rank 0 only) and which networks DDP wraps.
# Initial weights are those right after the model is built (and wrapped, so after DDP's broadcast).
RANK_WEIGHTS = '''
import copy
import runpy
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

import dvmsr_mma  # noqa: F401  (patches basicsr: before it is imported)
import basicsr.train

built = []
build_model = basicsr.train.build_model


def weights(model):
    nets = {'net_g': model.net_g, 'net_g_ema': model.net_g_ema, 'adapters': getattr(model, 'adapters', None)}
    return {k: copy.deepcopy(model.get_bare_model(v).state_dict()) for k, v in nets.items() if v is not None}


def build_and_record(opt):
    model = build_model(opt)
    built.append((model, weights(model), torch.distributed.get_rank()))  # the run closes its group at the end
    return model


basicsr.train.build_model = build_and_record
sys.argv = ['dvmsr_mma', *sys.argv[1:]]
try:
    runpy.run_module('dvmsr_mma', run_name='__main__', alter_sys=True)
except SystemExit as exit_:
    if exit_.code:
        raise
model, initial, rank = built[0]
assert not torch.distributed.is_initialized()
ddp = sorted(name for name in ('net_g', 'adapters', 'net_t')
             if isinstance(getattr(model, name, None), DistributedDataParallel))
torch.save({'initial': initial, 'final': weights(model), 'ddp': ddp}, f'rank{rank}.pth')
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _dvmsr(embed_dim):
    return {'type': 'DVMSR', 'embed_dim': embed_dim, 'depths': [1], 'upscale': SCALE, 'd_state': 4,
            'drop_path_rate': 0.}


def _options(tmp_path, write_pairs, model_type):
    hr, lr = write_pairs(tmp_path / 'train', 4, 32, seed=0)
    opt = {
        'name': 'dist', 'model_type': model_type, 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'train': {
            'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': hr, 'dataroot_lq': lr,
            'io_backend': {'type': 'disk'}, 'gt_size': 16, 'use_hflip': True, 'use_rot': True,
            'num_worker_per_gpu': 1, 'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1, 'prefetch_mode': None}},
        'network_g': _dvmsr(8),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
            'total_iter': ITERS, 'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'logger': {'print_freq': 100, 'save_checkpoint_freq': 100, 'use_tb_logger': False},
    }
    if model_type == 'DistillationModel':  # teacher 12 channels wide, student 8: position end needs an adapter
        torch.manual_seed(0)
        weights = build_network(_dvmsr(12)).state_dict()
        torch.save({'params_ema': weights, 'params': weights}, tmp_path / 'teacher.pth')
        opt['network_t'] = _dvmsr(12)
        opt['path']['pretrain_network_t'] = str(tmp_path / 'teacher.pth')
        opt['train']['distill_opt'] = {'position': 'end', 'type': 'L1Loss', 'loss_weight': 1.0}
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    (tmp_path / 'rank_weights.py').write_text(RANK_WEIGHTS)
    return ['rank_weights.py', 'train', '-opt', 'opt.yml']


def _run_torchrun(tmp_path, argv):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', *argv, '--launcher', 'pytorch']
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def _run_slurm(tmp_path, argv):
    """Two tasks as ``srun`` would start them: only SLURM_* and MASTER_PORT set, no MASTER_ADDR."""
    env = {k: v for k, v in os.environ.items() if k not in ('MASTER_ADDR', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(SLURM_NTASKS='2', SLURM_NODELIST='localhost', MASTER_PORT=str(_free_port()), OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, *argv, '--launcher', 'slurm'], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env, SLURM_PROCID=str(rank)))
             for rank in range(2)]
    try:
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-5000:]


def _assert_equal(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f'{what}: {k}'


@pytest.mark.slow
@pytest.mark.parametrize('model_type, launcher', [('DistillationModel', 'pytorch'), ('SRModel', 'pytorch'),
                                                  ('DistillationModel', 'slurm')])
def test_two_cpu_ranks_train_identical_weights(tmp_path, write_pairs, model_type, launcher):
    argv = _options(tmp_path, write_pairs, model_type)
    (_run_torchrun if launcher == 'pytorch' else _run_slurm)(tmp_path, argv)

    ranks = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2)]
    nets = ['net_g', 'net_g_ema'] + (['adapters'] if model_type == 'DistillationModel' else [])
    assert sorted(ranks[0]['final']) == sorted(nets)
    assert ranks[0]['ddp'] == ranks[1]['ddp'] == sorted(set(nets) - {'net_g_ema'})  # the teacher is not wrapped
    if model_type == 'DistillationModel':  # 8 -> 12 channels: a 1x1 conv, wrapped in DDP and trained
        assert ranks[0]['final']['adapters']['maps.0.weight'].shape == (12, 8, 1, 1)
    for net in nets:
        _assert_equal(ranks[0]['initial'][net], ranks[1]['initial'][net], f'initial {net}')
        _assert_equal(ranks[0]['final'][net], ranks[1]['final'][net], f'trained {net}')
        changed = [k for k, v in ranks[0]['final'][net].items()
                   if v.is_floating_point() and not torch.equal(v, ranks[0]['initial'][net][k])]
        assert changed, f'{net} did not train'
    # what rank 0 saved is what both ranks hold
    saved = torch.load(tmp_path / 'experiments' / 'dist' / 'models' / 'net_g_latest.pth', weights_only=True)
    _assert_equal(saved['params'], ranks[1]['final']['net_g'], 'saved params')
    _assert_equal(saved['params_ema'], ranks[1]['final']['net_g_ema'], 'saved params_ema')


@pytest.mark.parametrize('node_list, host', [('localhost', 'localhost'), ('n1,n2', 'n1'),
                                             ('node[03-07,9],gpu1', 'node03'), ('a[1-2]-ib,b', 'a1-ib')])
def test_first_slurm_host_without_scontrol(node_list, host):
    assert first_slurm_host(node_list) == host
