"""The official MMA option files (ArsenalCheng/MMA, ``options/{train,test}/MMA/*.yml``) run through ``basicsr train``
and ``basicsr test`` with this package.

The templates below have the official files' keys and values (comments left out); only these are changed:

- ``dataroot_gt`` / ``dataroot_lq``: ``~`` -> tiny generated images under ``tmp_path``;
- ``num_gpu``: 1 -> 0;
- ``train.total_iter``: 800000 (pre-training) / 250000 (fine-tuning) -> 1; ``val_freq``, ``save_checkpoint_freq``
  and ``print_freq`` stay: BasicSR validates and saves ``net_g_latest.pth`` at the end of every run anyway;
- ``datasets.train``: ``batch_size_per_gpu`` 4 -> 1, ``num_worker_per_gpu`` 4 -> 0, and ``prefetch_mode``
  ``cuda`` -> ``~``: without a CUDA device this package stops ``prefetch_mode: cuda`` with a one-line error on
  purpose (BasicSR's CUDAPrefetcher needs CUDA streams), and these runs are on CPU;
- ``path.pretrain_network_g``: ``~`` -> a checkpoint of the same network for fine-tuning and testing, saved
  here with ``torch.save({'params': net.state_dict()})`` (the x3 test keeps ``~``: it stops before loading);
- ``network_g.num_block``: 24 -> 2. The width (``num_feat: 192``) and every other key stay; 24 blocks of MMA-B on
  a 64x64 LR patch took 14-69 s per one-iteration run on this project's 2-core machine, and the block count is
  not what these tests check (tests/test_mma_arch.py checks the 24-block network and its parameter counts).
"""
import os

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from train_runs import run_log

from dvmsr_mma.cli import main

BLOCKS = 2  # official: 24
NETWORK = """\
network_g:
  type: MMA
  num_in_ch: 3
  num_out_ch: 3
  num_feat: 192
  num_block: {blocks}  # official: 24
  upscale: {scale}
  img_range: 1.
  rgb_mean: [0.4488, 0.4371, 0.4040]
"""

METRICS = """\
  metrics:
    psnr: # metric name, can be arbitrary
      type: calculate_psnr
      crop_border: {scale}
      test_y_channel: true

    ssim: # metric name, can be arbitrary
      type: calculate_ssim
      crop_border: {scale}
      test_y_channel: true
"""

TRAIN = """\
# general settings
name: {name}
model_type: SRModel
scale: {scale}
num_gpu: 0  # official: 1
manual_seed: 10

# dataset and data loader settings
datasets:
  train:
{train_set}
    io_backend:
      type: disk

    gt_size: {gt_size}
    use_hflip: true
    use_rot: true

    # data loader
    use_shuffle: true
    num_worker_per_gpu: 0  # official: 4
    batch_size_per_gpu: 1  # official: 4
    dataset_enlarge_ratio: 1
    prefetch_mode: ~  # official: cuda (refused here without CUDA)
    pin_memory: True

  val:
    name: Set5
    type: PairedImageDataset
    dataroot_gt: {val_gt}
    dataroot_lq: {val_lq}
    io_backend:
      type: disk

# network structures
{network}
# path
path:
  pretrain_network_g: {pretrain}
  strict_load_g: true
  resume_state: ~

# training settings
train:
  ema_decay: 0.999
  optim_g:
    type: Adam
    lr: !!float {lr}
    weight_decay: 0
    betas: [0.9, 0.99]

  scheduler:
    type: MultiStepLR
    milestones: {milestones}
    gamma: 0.5

  total_iter: 1  # official: {total_iter}
  warmup_iter: -1  # no warm up

  # losses
  pixel_opt:
    type: L1Loss
    loss_weight: 1.0
    reduction: mean

# validation settings
val:
  val_freq: !!float 5e3
  save_img: false

{metrics}
# logging settings
logger:
  print_freq: 100
  save_checkpoint_freq: !!float 5e4
  use_tb_logger: true
  wandb:
    project: ~
    resume_id: ~

# dist training settings
dist_params:
  backend: nccl
  port: 29500
"""

PRETRAIN_SET = """\
    name: ImageNet
    type: ImageNetPairedDataset
    dataroot_gt: {gt}"""

FINETUNE_SET = """\
    name: DIV2K
    type: PairedImageDataset
    dataroot_gt: {gt}
    dataroot_lq: {lq}"""

TEST_SET = """\
  test_{i}:
    name: {name}
    type: PairedImageDataset
    dataroot_gt: {gt}
    dataroot_lq: {lq}
    io_backend:
      type: disk
"""
PIN_MEMORY_WITHOUT_CUDA = "ignore:'pin_memory' argument is set as true:UserWarning"  # the official pin_memory: True
BENCHMARKS = ('Set5', 'Set14', 'Urban100', 'BSD100', 'Manga109')

TEST = """\
# general settings
name: MMA_x{scale}_inference
model_type: SRModel
scale: {scale}
num_gpu: 0  # official: 1
manual_seed: 10

# dataset and data loader settings
datasets:
{test_sets}
# network structures
{network}
# path
path:
  pretrain_network_g: {pretrain}
  strict_load_g: true
  resume_state: ~

# validation settings
val:
  save_img: true
  suffix: ~  # add suffix to saved images, if None, use exp name

{metrics}"""


def network(scale, res_scale=None):
    text = NETWORK.format(scale=scale, blocks=BLOCKS)
    return text + (f'  res_scale: {res_scale}\n' if res_scale is not None else '')


def mma_weights(path, scale):
    """A checkpoint of the official files' MMA (random weights), as BasicSR saves one."""
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get('MMA')(num_in_ch=3, num_out_ch=3, num_feat=192, num_block=BLOCKS, upscale=scale,
                                   img_range=1., rgb_mean=[0.4488, 0.4371, 0.4040])
    torch.save({'params': net.state_dict()}, path)
    return str(path)


def tiny_imagenet(root):
    """ImageNet's train/<wnid>/*.JPEG, one 16x16 image per class (ImageNetPairedDataset enlarges it to gt_size)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for wnid in ('n01440764', 'n01443537'):
        (root / wnid).mkdir(parents=True)
        cv2.imwrite(str(root / wnid / f'{wnid}_1.JPEG'), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return str(root)


def train_yml(tmp_path, kind, scale, train_set, pretrain='~'):
    val_gt, val_lq = str(tmp_path / 'Set5' / 'HR'), str(tmp_path / 'Set5' / 'LR')
    if kind == 'pretrain':
        settings = dict(lr='2e-4', milestones='[300000, 500000, 650000, 700000, 750000]', total_iter=800000)
    else:
        settings = dict(lr='1e-5', milestones='[125000, 200000, 225000, 240000]', total_iter=250000)
    text = TRAIN.format(name=f'MMA_x{scale}_{kind}', scale=scale, train_set=train_set, gt_size=64 * scale,
                        val_gt=val_gt, val_lq=val_lq, network=network(scale), pretrain=pretrain,
                        metrics=METRICS.format(scale=scale), **settings)
    path = tmp_path / f'train_MMA_x{scale}_{kind}.yml'
    path.write_text(text)
    return path


def inference_yml(tmp_path, scale, pretrain, res_scale=None):
    gt, lq = str(tmp_path / 'Set5' / 'HR'), str(tmp_path / 'Set5' / 'LR')
    sets = '\n'.join(TEST_SET.format(i=i, name=name, gt=gt, lq=lq) for i, name in enumerate(BENCHMARKS, 1))
    text = TEST.format(scale=scale, test_sets=sets, network=network(scale, res_scale), pretrain=pretrain,
                       metrics=METRICS.format(scale=scale))
    path = tmp_path / f'test_MMA_x{scale}.yml'
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.filterwarnings(PIN_MEMORY_WITHOUT_CUDA)
def test_pretrain_x2(tmp_path, write_pairs, monkeypatch, fresh_logger):
    write_pairs(tmp_path / 'Set5', 2, 48, seed=1, scale=2)
    train_set = PRETRAIN_SET.format(gt=tiny_imagenet(tmp_path / 'ImageNet' / 'train'))
    path = train_yml(tmp_path, 'pretrain', 2, train_set)
    monkeypatch.chdir(tmp_path)

    assert main(['train', '-opt', str(path)]) == 0
    run = tmp_path / 'experiments' / 'MMA_x2_pretrain'
    weights = torch.load(run / 'models' / 'net_g_latest.pth', weights_only=True)
    assert set(weights) == {'params', 'params_ema'}
    assert weights['params']['conv_first.weight'].shape == (192, 3, 3, 3)
    log = run_log(run)
    assert 'Dataset [ImageNetPairedDataset] - ImageNet is built' in log and '# psnr: ' in log and '# ssim: ' in log


@pytest.mark.slow
@pytest.mark.filterwarnings(PIN_MEMORY_WITHOUT_CUDA)
def test_finetune_x2(tmp_path, write_pairs, monkeypatch, fresh_logger):
    write_pairs(tmp_path / 'Set5', 2, 48, seed=1, scale=2)
    gt, lq = write_pairs(tmp_path / 'DIV2K', 1, 128, seed=2, scale=2)  # gt_size 128: the smallest HR
    pretrained = mma_weights(tmp_path / 'MMA_x2_pretrain.pth', 2)
    path = train_yml(tmp_path, 'finetune', 2, FINETUNE_SET.format(gt=gt, lq=lq), pretrain=pretrained)
    monkeypatch.chdir(tmp_path)

    assert main(['train', '-opt', str(path)]) == 0
    run = tmp_path / 'experiments' / 'MMA_x2_finetune'
    assert (run / 'models' / 'net_g_latest.pth').is_file()
    log = run_log(run)
    assert f'Loading MMA model from {pretrained}' in log and '# psnr: ' in log


@pytest.mark.parametrize('scale', [2, 4])
def test_test_x2_x4(scale, tmp_path, write_pairs, monkeypatch, fresh_logger):
    write_pairs(tmp_path / 'Set5', 2, 48, seed=1, scale=scale)
    path = inference_yml(tmp_path, scale, mma_weights(tmp_path / f'MMA_x{scale}.pth', scale))
    monkeypatch.chdir(tmp_path)

    assert main(['test', '-opt', str(path)]) == 0
    results = tmp_path / 'results' / f'MMA_x{scale}_inference'
    for name in BENCHMARKS:
        assert sorted(os.listdir(results / 'visualization' / name)) == [
            f'000{i}_MMA_x{scale}_inference.png' for i in range(2)]
    log = run_log(results)
    assert all(f'Validation {name}\n\t # psnr: ' in log for name in BENCHMARKS), log[-2000:]


def test_test_x3_res_scale_is_one_line(tmp_path, write_pairs, monkeypatch, fresh_logger, capsys):
    """The official test_MMA_x3.yml passes res_scale: 0.1, which the official MMA constructor does not take either
    (upstream stops with a TypeError traceback)."""
    write_pairs(tmp_path / 'Set5', 2, 48, seed=1, scale=3)
    path = inference_yml(tmp_path, 3, '~', res_scale=0.1)
    monkeypatch.chdir(tmp_path)

    assert main(['test', '-opt', str(path)]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith('basicsr test: error: ') and 'res_scale' in last and 'MMA' in last, last
