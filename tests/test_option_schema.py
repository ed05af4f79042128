"""Issue 23: any option file gets a run or one line. Every leaf of every option file in ``options/``, of files with
the official MMA and BasicSR keys, and of a small valid run is mutated (delete, ~, text, negative, zero, huge, list,
mapping, nonexistent path); validation accepts the file or raises one :class:`OptionError` line, never another
exception, and never leaves more DataLoader workers than the machine's cores allow. A sample goes through the
``basicsr train`` / ``basicsr test`` CLIs. Plus unknown keys, ``basicsr check`` and BasicSR's error contract."""
import copy
import glob
import logging
import os
import random
import sys

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_inputs import options_for_test, train_options
from test_official_options import BENCHMARKS, FINETUNE_SET, METRICS, TEST, TEST_SET, TRAIN, network
from test_realesrgan import OFFICIAL_REALESRGAN, OFFICIAL_REALESRNET

from dvmsr_mma.cli import main
from dvmsr_mma.training import option_schema
from dvmsr_mma.training.option_schema import WORKERS_PER_CORE, validate_options
from dvmsr_mma.utils.errors import OptionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
MUTATIONS = ('delete', None, 'abc', -1, 0, 10000000, [1, 2], {'x': 1}, '/nonexistent/x')

# BasicSR's options/train/SRResNet_SRGAN/train_MSRResNet_x4.yml (comments left out), as BasicSR 1.4.2 ships it
BASICSR_MSRRESNET = """
name: 001_MSRResNet_x4_f64b16_DIV2K_1000k_B16G1_wandb
model_type: SRModel
scale: 4
num_gpu: 1
manual_seed: 0
datasets:
  train:
    name: DIV2K
    type: PairedImageDataset
    dataroot_gt: datasets/DF2K/DIV2K_train_HR_sub
    dataroot_lq: datasets/DF2K/DIV2K_train_LR_bicubic_X4_sub
    meta_info_file: basicsr/data/meta_info/meta_info_DIV2K800sub_GT.txt
    filename_tmpl: '{}'
    io_backend:
      type: disk
    gt_size: 128
    use_hflip: true
    use_rot: true
    num_worker_per_gpu: 6
    batch_size_per_gpu: 16
    dataset_enlarge_ratio: 100
    prefetch_mode: ~
  val:
    name: Set5
    type: PairedImageDataset
    dataroot_gt: datasets/Set5/GTmod12
    dataroot_lq: datasets/Set5/LRbicx4
    io_backend:
      type: disk
network_g:
  type: MSRResNet
  num_in_ch: 3
  num_out_ch: 3
  num_feat: 64
  num_block: 16
  upscale: 4
path:
  pretrain_network_g: ~
  param_key_g: params
  strict_load_g: true
  resume_state: ~
train:
  ema_decay: 0.999
  optim_g:
    type: Adam
    lr: !!float 2e-4
    weight_decay: 0
    betas: [0.9, 0.99]
  scheduler:
    type: CosineAnnealingRestartLR
    periods: [250000, 250000, 250000, 250000]
    restart_weights: [1, 1, 1, 1]
    eta_min: !!float 1e-7
  total_iter: 1000000
  warmup_iter: -1
  pixel_opt:
    type: L1Loss
    loss_weight: 1.0
    reduction: mean
val:
  val_freq: !!float 5e3
  save_img: false
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 4
      test_y_channel: false
      better: higher
    ssim:
      type: calculate_ssim
      crop_border: 4
      test_y_channel: false
      better: higher
logger:
  print_freq: 100
  save_checkpoint_freq: !!float 5e3
  use_tb_logger: true
  wandb:
    project: ~
    resume_id: ~
dist_params:
  backend: nccl
  port: 29500
"""


def _official_mma():
    sets = '\n'.join(TEST_SET.format(i=i, name=name, gt='x/HR', lq='x/LR') for i, name in enumerate(BENCHMARKS, 1))
    train = TRAIN.format(name='MMA_x2_finetune', scale=2, train_set=FINETUNE_SET.format(gt='x/HR', lq='x/LR'),
                         gt_size=128, val_gt='x/HR', val_lq='x/LR', network=network(2), pretrain='~',
                         metrics=METRICS.format(scale=2), lr='1e-5', milestones='[125000, 200000]', total_iter=1)
    test = TEST.format(scale=2, test_sets=sets, network=network(2), pretrain='~', metrics=METRICS.format(scale=2))
    return {'official MMA train': yaml.safe_load(train), 'official MMA test': yaml.safe_load(test)}


FILES = {**{os.path.basename(p): yaml.safe_load(open(p)) for p in sorted(glob.glob(f'{REPO}/options/*.yml'))},
         **_official_mma(), 'BasicSR train_MSRResNet_x4': yaml.safe_load(BASICSR_MSRRESNET),
         'BasicSR train_realesrnet_x4plus': yaml.safe_load(OFFICIAL_REALESRNET),
         'BasicSR train_realesrgan_x4plus': yaml.safe_load(OFFICIAL_REALESRGAN)}


def leaves(value, path=()):
    """Every leaf's path (mapping keys and list indices) of an option mapping."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from leaves(item, (*path, i))
    else:
        yield path


def mutated(opt, path, mutation):
    opt = copy.deepcopy(opt)
    parent = opt
    for key in path[:-1]:
        parent = parent[key]
    if mutation == 'delete':
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(mutation)
    return opt


def assert_one_line(err):
    message = str(err)
    assert message and '\n' not in message, message
    assert ': ' in message, message  # "<option path>: <what was found>; <what to write>"


def workers_bounded(opt):
    # a run never starts more GPUs' worth than are visible: compat refuses num_gpu above the CUDA device count (one
    # line, tests/test_compat.py) before a DataLoader exists, so the schema accepts a server's num_gpu: 8 on a laptop
    gpus = opt.get('num_gpu') if isinstance(opt.get('num_gpu'), int) else 1
    gpus = min(gpus, max(1, torch.cuda.device_count()))
    for dataset in (opt.get('datasets') or {}).values():
        workers = (dataset or {}).get('num_worker_per_gpu')
        if isinstance(workers, int):
            assert workers * max(1, gpus) <= WORKERS_PER_CORE * CORES


@pytest.mark.parametrize('name', list(FILES))
def test_shipped_and_official_files_validate_unchanged(name, capsys):
    """No error and no unknown key in any shipped or official file (a warning only where the file asks for more
    DataLoader workers than this machine's cores allow, which are lowered)."""
    assert validate_options(copy.deepcopy(FILES[name])) == []
    assert 'unknown option' not in capsys.readouterr().err


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_leaf_mutated_validates_or_is_one_line(data):
    name = data.draw(st.sampled_from(sorted(FILES)))
    path = data.draw(st.sampled_from(list(leaves(FILES[name]))))
    mutation = data.draw(st.sampled_from(MUTATIONS))
    opt = mutated(FILES[name], path, mutation)
    try:
        validate_options(opt)
    except OptionError as err:
        assert_one_line(err)
        return
    workers_bounded(opt)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    from conftest import _write_pairs
    root = tmp_path_factory.mktemp('data')
    _write_pairs(root / 'train', 4, 64, seed=0)
    _write_pairs(root / 'val', 2, 48, seed=1)
    return root


def _run_parse(opt, root, is_train, monkeypatch):
    """``parse_options`` as ``basicsr train`` / ``test`` call it (schema, parsing, pre-flight; nothing built)."""
    import basicsr.test
    import basicsr.train
    path = root / f'mutated_{os.getpid()}.yml'
    path.write_text(yaml.safe_dump(opt))
    monkeypatch.setattr(sys, 'argv', ['basicsr', '-opt', str(path)])
    parse = basicsr.train.parse_options if is_train else basicsr.test.parse_options
    parsed, _ = parse(str(root), is_train=is_train)
    return parsed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_small_run_mutated_parses_or_is_one_line(data, tiny_data, monkeypatch, capsys):
    """The whole pre-flight (schema, BasicSR's parse_options, file and pairing checks) of a small valid run with
    real images, train and test options, one leaf mutated."""
    is_train = data.draw(st.booleans())
    base = train_options(tiny_data) if is_train else options_for_test(tiny_data)
    path = data.draw(st.sampled_from(list(leaves(base))))
    opt = mutated(base, path, data.draw(st.sampled_from(MUTATIONS)))
    with monkeypatch.context() as patch:
        try:
            parsed = _run_parse(opt, tiny_data, is_train, patch)
        except (OptionError, FileNotFoundError) as err:
            assert_one_line(err)
            return
    workers_bounded(parsed)


def _cli_cases():
    """A fixed sample of 10 mutated runs (8 train, 2 test): each a few iterations of a tiny DVMSR on CPU."""
    rng = random.Random(23)
    cases = []
    for is_train, count in ((True, 8), (False, 2)):
        paths = sorted(leaves(train_options(_Root()) if is_train else options_for_test(_Root())), key=str)
        for _ in range(count):
            cases.append((is_train, rng.choice(paths), rng.choice(MUTATIONS)))
    return cases


class _Root:
    """Stands for the data folder when listing leaves (the paths' values do not matter there)."""

    def __truediv__(self, other):
        return self


@pytest.mark.parametrize('is_train, path, mutation', _cli_cases(), ids=lambda v: str(v))
def test_cli_sample_exits_0_or_2_without_traceback(is_train, path, mutation, tmp_path, write_pairs, monkeypatch,
                                                   capsys):
    write_pairs(tmp_path / 'train', 4, 64, seed=0)
    write_pairs(tmp_path / 'val', 2, 48, seed=1)
    base = train_options(tmp_path) if is_train else options_for_test(tmp_path)
    opt = mutated(base, path, mutation)
    yml = tmp_path / 'opt.yml'
    yml.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger('basicsr'), 'handlers', [])
    code = main(['train' if is_train else 'test', '-opt', str(yml)])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert 'Traceback' not in err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith('basicsr ')


# ---------------------------------------------------------------------------------------------------- unknown keys
def test_unknown_key_warns_once_with_the_closest_name(tiny_data, capsys, monkeypatch):
    opt = train_options(tiny_data)
    opt['datasets']['train']['use_hfip'] = True
    monkeypatch.setattr(option_schema, '_warned', set())
    _run_parse(opt, tiny_data, True, monkeypatch)  # validated before and after parse_options
    lines = [line for line in capsys.readouterr().err.splitlines() if 'use_hfip' in line]
    assert lines == ['warning: datasets.train.use_hfip: unknown option, BasicSR ignores it; did you mean use_hflip?']


def test_unknown_key_is_an_error_when_asked(tiny_data, monkeypatch):
    opt = train_options(tiny_data)
    opt['train']['ema_decy'] = 0.999
    opt['unknown_options'] = 'error'
    with pytest.raises(OptionError, match=r'^train\.ema_decy: unknown option.*did you mean ema_decay\?'):
        validate_options(opt)


# ---------------------------------------------------------------------------------------------------- basicsr check
def test_check_accepts_a_valid_file_and_writes_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    yml = tmp_path / 'ok.yml'
    yml.write_text(yaml.safe_dump(train_options(tiny_data)))
    monkeypatch.chdir(tmp_path)
    assert main(['check', '-opt', str(yml)]) == 0
    assert 'ok (train options)' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['ok.yml']


@pytest.mark.parametrize('change, strict, part', [
    (lambda opt: opt['datasets']['train'].update(batch_size_per_gpu='four'), False,
     "datasets.train.batch_size_per_gpu: 'four' is not a whole number"),
    (lambda opt: opt['datasets']['train'].update(use_hfip=True), True,
     'datasets.train.use_hfip: unknown option, BasicSR ignores it; did you mean use_hflip?'),
    (lambda opt: opt['train']['pixel_opt'].update(type='abc'), False,
     "train.pixel_opt.type: 'abc' is not registered in BasicSR's loss registry"),
])
def test_check_refuses_with_one_line_and_exit_2(change, strict, part, tiny_data, tmp_path, monkeypatch, capsys):
    opt = train_options(tiny_data)
    change(opt)
    yml = tmp_path / 'bad.yml'
    yml.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    assert main(['check', '-opt', str(yml), *(['--strict'] if strict else [])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith('basicsr check: error: ') and part in last


def test_check_of_a_test_file(tiny_data, tmp_path, monkeypatch, capsys):
    yml = tmp_path / 'test.yml'
    yml.write_text(yaml.safe_dump(options_for_test(tiny_data)))
    monkeypatch.chdir(tmp_path)
    assert main(['check', '-opt', str(yml)]) == 0
    assert 'ok (test options)' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- error contract
def test_registry_error_is_basicsr_keyerror_too():
    from basicsr.utils.registry import ARCH_REGISTRY
    with pytest.raises(KeyError) as caught:
        ARCH_REGISTRY.get('DVMSRR')
    assert isinstance(caught.value, OptionError) and 'did you mean DVMSR' in str(caught.value)
    assert not str(caught.value).startswith("'")  # KeyError's quoting is not kept


def test_schema_errors_are_basicsr_documented_exceptions_too(tiny_data):
    opt = train_options(tiny_data)
    opt['train']['optim_g']['type'] = 'Adamm'
    with pytest.raises(NotImplementedError, match=r'^train\.optim_g\.type: .*did you mean Adam\?') as caught:
        validate_options(opt)
    assert isinstance(caught.value, OptionError)
    opt = train_options(tiny_data)
    opt['network_g']['type'] = 'DVMSRR'
    with pytest.raises(KeyError, match='network_g.type'):
        validate_options(opt)


# ---------------------------------------------------------------------------------------------------- a run or a line
def _wrong_type(value):
    return 7 if isinstance(value, str) else 'abc'


def _real_esrgan_options(root):
    """BasicSR's train_realesrgan_x4plus.yml, small, on ``root/train/HR`` (no perceptual loss: no VGG weights)."""
    opt = yaml.safe_load(OFFICIAL_REALESRGAN)
    meta = root / 'meta_info_real.txt'
    meta.write_text(''.join(f'{name}\n' for name in sorted(os.listdir(root / 'train' / 'HR'))))
    opt.update(num_gpu=0, gt_size=32, queue_size=4, network_g={'type': 'DVMSR', 'upscale': 4, 'embed_dim': 8,
                                                             'depths': [1], 'd_state': 4})
    opt['network_d']['num_feat'] = 8
    opt['datasets']['train'].update(dataroot_gt=str(root / 'train' / 'HR'), meta_info=str(meta), gt_size=32,
                                    batch_size_per_gpu=2, num_worker_per_gpu=0)
    opt['path']['pretrain_network_g'] = None
    del opt['train']['perceptual_opt']
    opt['logger']['wandb'] = None
    return opt


@pytest.mark.parametrize('kind', ['SRModel', 'RealESRGANModel'])
def test_every_leaf_none_deleted_or_mistyped_runs_or_is_one_line(kind, tiny_data, monkeypatch, capsys):
    """Issue 30: a valid training file with any one leaf set to ``~``, deleted or of a wrong type either passes the
    whole pre-flight and then builds its training set, draws a sample, builds its model and trains a step (BasicSR's
    ``Both pixel and perceptual losses are None`` or ``None * tensor`` would surface there), or is one OptionError
    line."""
    from basicsr.models import build_model

    base = train_options(tiny_data) if kind == 'SRModel' else _real_esrgan_options(tiny_data)
    failures = []
    for path in leaves(base):
        for mutation in ('delete', None, _wrong_type(_value(base, path))):
            opt = mutated(base, path, mutation)
            with monkeypatch.context() as patch:
                try:
                    parsed = _run_parse(opt, tiny_data, True, patch)
                except (OptionError, FileNotFoundError) as err:
                    if '\n' in str(err) or ': ' not in str(err):
                        failures.append(f'{path} -> {mutation!r}: not one line: {err}')
                    continue
            try:
                _train_one_step(build_model, parsed)
            except Exception as err:  # what the user would have met as a traceback
                failures.append(f'{path} -> {mutation!r}: validated, then {type(err).__name__}: {err}')
    capsys.readouterr()
    assert not failures, '\n'.join(failures)


def _value(opt, path):
    for key in path:
        opt = opt[key]
    return opt


def _train_one_step(build_model, opt):
    """What ``train_pipeline`` does with the options before and in its first iteration, without folders: a sample of
    the training set, then a step of the model on a batch of random images."""
    from basicsr.data import build_dataset

    opt = copy.deepcopy(opt)
    build_dataset(opt['datasets']['train'])[0]
    model = build_model(opt)
    scale, size = opt['scale'], 16
    kernel = torch.zeros(2, 21, 21)
    kernel[:, 10, 10] = 1
    model.feed_data({'lq': torch.rand(2, 3, size, size), 'gt': torch.rand(2, 3, size * scale, size * scale),
                     'kernel1': kernel, 'kernel2': kernel, 'sinc_kernel': kernel})
    model.update_learning_rate(1, warmup_iter=opt['train'].get('warmup_iter', -1))
    model.optimize_parameters(1)


# ---------------------------------------------------------------------------------------------------- models' keys
@pytest.mark.parametrize('model_type', ['RealESRNetModel', 'RealESRGANModel'])
def test_real_esrgan_keys_come_from_the_models_code_and_are_typed(model_type):
    model = option_schema.model_class(model_type)
    reads = option_schema.model_reads(model).top
    assert {'resize_prob', 'jpeg_range2', 'gt_size', 'queue_size', 'second_blur_prob'} <= set(reads)
    own = [key for key in reads if not option_schema._patterned(option_schema.Options, key)]  # not a generic key
    assert own and all(option_schema.degradation_leaf(key) for key in own), [
        key for key in own if not option_schema.degradation_leaf(key)]


def test_real_esrgan_dataset_schema_has_every_key_its_code_reads():
    from basicsr.data.realesrgan_dataset import RealESRGANDataset
    reads = option_schema.model_reads(RealESRGANDataset).top
    fields = option_schema.RealESRGANDataset.model_fields
    assert len(reads) > 15 and set(reads) <= set(fields), set(reads) - set(fields)
    required = {key for key, info in fields.items() if info.is_required()}
    assert required == {key for key, always in reads.items() if always} - {'io_backend', 'dataroot_gt', 'meta_info'}


def _official_gan():
    return yaml.safe_load(OFFICIAL_REALESRGAN)


@pytest.mark.parametrize('change, message', [
    (lambda o: o.update(resize_prob=[0.2, 0.7]), 'resize_prob: [0.2, 0.7] is not 3 probabilities (up, down, keep) '
                                                 'summing to 1; write e.g. resize_prob: [0.2, 0.7, 0.1]'),
    (lambda o: o.update(jpeg_range2=[30, 120]), 'jpeg_range2: [30, 120] is not two JPEG qualities'),
    (lambda o: o.update(resize_range=[1.2, 1.5]), 'resize_range: [1.2, 1.5] is not two scale factors [down, up]'),
    (lambda o: o.update(gray_noise_prob='0.4'), "gray_noise_prob: '0.4' is quoted"),
    (lambda o: o.update(l1_gt_usm=None), 'l1_gt_usm: ~ is not true or false'),
    (lambda o: o.pop('noise_range2'), 'noise_range2: not set; RealESRGANModel reads it to make the training pairs'),
    (lambda o: o.update(queue_size=100), 'queue_size: 100 is not a multiple of the batch size 12 (datasets.train.'
                                         'batch_size_per_gpu); RealESRGANModel\'s training-pair queue holds whole '
                                         'batches; write queue_size: 96 or 108'),
    (lambda o: o['datasets']['train'].update(batch_size_per_gpu=7), 'queue_size: 180 is not a multiple of the '
                                                                     'batch size 7'),
    (lambda o: o.update(gt_size=16), 'gt_size: 16 does not fit: RealESRGANModel USM-sharpens the GT patch'),
    (lambda o: o.update(gt_size=258), 'gt_size: 258 does not fit: the LR patch is gt_size / scale pixels; write '
                                      'gt_size: 260'),
    (lambda o: o['train'].pop('gan_opt'), 'train.gan_opt: not set; RealESRGANModel trains a discriminator'),
    (lambda o: o.pop('network_d'), 'network_d: not set; RealESRGANModel trains a discriminator'),
    (lambda o: o['train']['perceptual_opt'].update(perceptual_weight=None), 'train.perceptual_opt.perceptual_weight: '
                                                                             '~ is not a value PerceptualLoss takes'),
])
def test_real_esrgan_bad_values_are_one_line(change, message):
    opt = _official_gan()
    change(opt)
    with pytest.raises(OptionError) as caught:
        validate_options(opt)
    assert_one_line(caught.value)
    assert str(caught.value).startswith(message)


def test_sr_model_without_a_loss_is_one_line():
    opt = yaml.safe_load(BASICSR_MSRRESNET)
    del opt['train']['pixel_opt']
    with pytest.raises(OptionError, match=r'^train\.pixel_opt: not set, nor train\.perceptual_opt; SRModel trains'):
        validate_options(opt)


def test_queue_size_counts_the_dataparallel_batch():
    opt = _official_gan()
    opt.update(num_gpu=4, queue_size=36)  # a parsed file: num_gpu resolved, no launcher (DataParallel), 12 x 4 = 48
    opt['dist'] = False
    with pytest.raises(OptionError, match=r'batch size 48 \(datasets.train.batch_size_per_gpu x num_gpu 4\)'):
        validate_options(opt)
    opt['dist'] = True  # each process its own batch of 12
    validate_options(opt)
