"""Issue 9's matrix of bad inputs: each one, through ``basicsr train`` / ``basicsr test``, is exit status 2 and a
single ``basicsr <command>: error: ...`` line naming the option and the fix, never a traceback from BasicSR."""
import copy
import logging
import os

import cv2
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from dvmsr_mma.cli import main
from dvmsr_mma.training.checks import check_options

SCALE = 2
NETWORK = {'type': 'DVMSR', 'embed_dim': 8, 'depths': [1], 'upscale': SCALE, 'd_state': 4, 'drop_path_rate': 0.}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')


def train_options(root):
    """Valid tiny options (as tests/test_cli.py's) over HR/LR folders ``root/{train,val}/{HR,LR}``."""
    def dataset(phase, **extra):
        return {'name': phase, 'type': 'PairedImageDataset', 'dataroot_gt': str(root / phase / 'HR'),
                'dataroot_lq': str(root / phase / 'LR'), 'io_backend': {'type': 'disk'}, **extra}
    return {
        'name': 'bad', 'model_type': 'SRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dataset('train', gt_size=32, use_hflip=True, use_rot=True, num_worker_per_gpu=0,
                             batch_size_per_gpu=2),
            'val': dataset('val'),
        },
        'network_g': dict(NETWORK),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},
            'total_iter': 4, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
        },
        'val': {'val_freq': 4, 'save_img': False},
        'logger': {'print_freq': 2, 'save_checkpoint_freq': 4, 'use_tb_logger': False},
    }


def options_for_test(root):
    opt = train_options(root)
    return {'name': 'bad_test', 'model_type': 'SRModel', 'scale': SCALE, 'num_gpu': 0,
            'datasets': {'test_1': opt['datasets']['val']}, 'network_g': dict(NETWORK),
            'path': {'pretrain_network_g': None, 'strict_load_g': True}, 'val': {'save_img': False}}


# ------------------------------------------------------------------------------------------- mutations
def _parent(opt, option):
    keys = option.split('.')
    for key in keys[:-1]:
        opt = opt[key]
    return opt, keys[-1]


def put(option, value):
    def mutate(opt, root):
        parent, key = _parent(opt, option)
        parent[key] = value(root) if callable(value) else value
    return mutate


def drop(option):
    def mutate(opt, root):
        parent, key = _parent(opt, option)
        del parent[key]
    return mutate


def both(*mutations):
    def mutate(opt, root):
        for mutation in mutations:
            mutation(opt, root)
    return mutate


def empty_folder(root):
    (root / 'empty').mkdir()
    return str(root / 'empty')


def an_image(root):
    return str(root / 'train' / 'LR' / '0000.png')


def folder_of_folders(root):
    (root / 'parent' / 'HR').mkdir(parents=True)
    return str(root / 'parent')


def lr_folder(root, scale):
    """``root/LR_x<scale>``: the train HR images shrunk by ``scale`` (not the options' scale)."""
    lr_dir = root / f'LR_x{scale}'
    lr_dir.mkdir()
    for hr_path in sorted((root / 'train' / 'HR').iterdir()):
        hr = cv2.imread(str(hr_path))
        cv2.imwrite(str(lr_dir / hr_path.name), cv2.resize(hr, (hr.shape[1] // scale, hr.shape[0] // scale)))
    return str(lr_dir)


def lmdb(root, scale):
    """HR.lmdb and LR.lmdb made from the train HR folder and its LR at ``scale``."""
    names = sorted(p.name for p in (root / 'train' / 'HR').iterdir())
    keys = [os.path.splitext(n)[0] for n in names]
    lr_dir = str(root / 'train' / 'LR') if scale == SCALE else lr_folder(root, scale)
    make_lmdb_from_imgs(str(root / 'train' / 'HR'), str(root / 'HR.lmdb'), names, keys)
    make_lmdb_from_imgs(lr_dir, str(root / 'LR.lmdb'), names, keys)
    return str(root / 'HR.lmdb'), str(root / 'LR.lmdb')


def use_lmdb(scale=SCALE, remove=None, empty=False):
    def mutate(opt, root):
        hr, lr = lmdb(root, scale)
        if remove:
            os.remove(os.path.join(hr, remove))
        if empty:
            open(os.path.join(hr, 'meta_info.txt'), 'w').close()
        opt['datasets']['train'].update(dataroot_gt=hr, dataroot_lq=lr, io_backend={'type': 'lmdb'})
    return mutate


def lmdb_without_meta_info(opt, root):
    (root / 'HR.lmdb').mkdir()
    (root / 'HR.lmdb' / 'data.mdb').write_bytes(b'')
    opt['datasets']['train'].update(dataroot_gt=str(root / 'HR.lmdb'), io_backend={'type': 'lmdb'})


def remove_lr(opt, root):
    os.remove(root / 'train' / 'LR' / '0003.png')


def extra_lr(opt, root):
    (root / 'train' / 'LR' / '0009.png').write_bytes((root / 'train' / 'LR' / '0000.png').read_bytes())


def stray_file(opt, root):
    for side in ('HR', 'LR'):
        (root / 'train' / side / 'notes.txt').write_text('not an image')


def lr_at_scale(phase, scale):
    def mutate(opt, root):
        opt['datasets'][phase].update(dataroot_gt=str(root / 'train' / 'HR'), dataroot_lq=lr_folder(root, scale))
    return mutate


def meta_info_listing_a_missing_image(opt, root):
    meta = root / 'meta.txt'
    meta.write_text('0000.png (64,64,3)\n0042.png (64,64,3)\n')
    opt['datasets']['train']['meta_info_file'] = str(meta)


def imagenet_empty(opt, root):
    opt['datasets']['train'] = {'name': 'imagenet', 'type': 'ImageNetPretrainDataset',
                                'dataroot_gt': folder_of_folders(root), 'io_backend': {'type': 'disk'},
                                'gt_size': 32, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2}


def weights(network, key='params'):
    def write(root):
        path = root / 'weights.pth'
        torch.save({key: build_network(copy.deepcopy(network)).state_dict()}, path)
        return str(path)
    return write


def plain_state_dict(root):
    path = root / 'plain.pth'
    torch.save(build_network(dict(NETWORK)).state_dict(), path)
    return str(path)


def not_a_checkpoint(root):
    (root / 'w.pth').write_text('not a checkpoint')
    return str(root / 'w.pth')


def pickled_network(root):
    torch.save({'params': build_network(dict(NETWORK))}, root / 'net.pth')  # the module, not its state dict
    return str(root / 'net.pth')


def distillation_without_teacher(opt, root):
    opt['model_type'] = 'DistillationModel'
    opt['network_t'] = dict(NETWORK, embed_dim=12)
    opt['train']['distill_opt'] = {'position': 'output', 'type': 'L1Loss', 'loss_weight': 1.0}


def distillation_with_teacher(opt, root):
    """A DistillationModel run whose teacher is a small SRVGGNetCompact, with its pretrained weights."""
    distillation_without_teacher(opt, root)
    opt['network_t'] = dict(OTHER_ARCH)
    opt['path']['pretrain_network_t'] = weights(OTHER_ARCH)(root)


def nan_weights(root):
    """Weights that fit NETWORK but with NaN (and an Inf) in ``conv_first.weight``, as a diverged run saves."""
    state = build_network(dict(NETWORK)).state_dict()
    state['conv_first.weight'].view(-1)[:2] = float('nan')
    state['conv_first.weight'].view(-1)[2] = float('inf')
    torch.save({'params': state}, root / 'nan.pth')
    return str(root / 'nan.pth')


OTHER_ARCH = {'type': 'SRVGGNetCompact', 'num_feat': 8, 'num_conv': 2, 'upscale': SCALE}
TRAIN, TEST = 'train', 'test'


def case(name, command, mutation, parts, argv=(), marks=(), early=True):
    """One row: ``command -opt <train/test options changed by mutation> *argv`` fails with ``parts`` in its line;
    ``early``: before BasicSR makes the run's folder (which a rerun would then archive)."""
    return pytest.param(command, mutation, parts, list(argv), early, id=name, marks=marks)


CASES = [
    # 1. unknown type
    case('unknown_network_type', TRAIN, put('network_g.type', 'DVMSRR'), ["type: 'DVMSRR' is not registered", 'DVMSR']),
    case('unknown_network_type_test', TEST, put('network_g.type', 'DVMSRR'), ["'DVMSRR' is not registered"]),
    case('unknown_model_type', TRAIN, put('model_type', 'SRModell'), ['did you mean SRModel']),
    # network arguments and scale (official test_MMA_x3.yml passes res_scale, which MMA does not take)
    case('network_unknown_argument', TEST, put('network_g', {'type': 'MMA', 'num_feat': 8, 'num_block': 1,
                                                             'upscale': SCALE, 'res_scale': 0.1}),
         ['network_g: MMA got an unexpected argument res_scale; MMA takes num_in_ch, num_out_ch, num_feat, ']),
    case('network_misspelt_argument', TRAIN, put('network_g', dict(OTHER_ARCH, num_convv=2)),
         ['network_g: SRVGGNetCompact got an unexpected argument num_convv (did you mean num_conv?)']),
    case('network_missing_argument', TRAIN, put('network_g', {'type': 'EDSR', 'num_in_ch': 3, 'upscale': SCALE}),
         ['network_g: EDSR needs num_out_ch (not set); EDSR takes num_in_ch, num_out_ch, ']),
    case('teacher_unknown_argument', TRAIN, both(distillation_with_teacher, put('network_t.upscal', SCALE)),
         ['network_t: SRVGGNetCompact got an unexpected argument upscal (did you mean upscale?)']),
    case('upscale_not_scale', TRAIN, put('network_g.upscale', 4),
         ['network_g.upscale: 4 but scale: 2; the network must upsample by scale', 'set network_g.upscale: 2']),
    case('upscale_default_not_scale', TEST, drop('network_g.upscale'),
         ['network_g: DVMSR upsamples by 4 (upscale not set) but scale: 2']),
    case('rrdbnet_scale_not_scale', TRAIN, put('network_g', {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3,
                                                             'scale': 4, 'num_feat': 8, 'num_block': 1}),
         ['network_g.scale: 4 but scale: 2']),
    case('network_with_an_empty_layer', TRAIN, put('network_g', {'type': 'MMA', 'num_feat': 20, 'num_block': 1,
                                                                 'upscale': SCALE}),
         ['network_g: MMA with these arguments has an empty layer (body.0.attn.channel_attention.cab.3.attention.1.'
          'weight has shape (0, 20, 1, 1))']),
    case('network_far_too_deep', TRAIN, put('network_g.depths', [10_000_000]),
         ['network_g: DVMSR with these arguments has more than 20,000 layers (modules); use smaller depths']),
    # 2. missing options
    case('no_scale', TRAIN, drop('scale'), ['scale: not set; add it, e.g. scale: 4']),
    case('no_network_g', TRAIN, drop('network_g'), ['network_g.type: not set', 'network_g: {type: DVMSR']),
    case('no_num_gpu', TRAIN, drop('num_gpu'), ['num_gpu: not set; add it, e.g. num_gpu: auto']),
    case('no_train_dataset', TRAIN, drop('datasets.train'), ['datasets.train: not set']),
    case('no_dataset_name', TRAIN, drop('datasets.train.name'), ['datasets.train.name: not set']),
    case('no_dataset_type', TRAIN, drop('datasets.val.type'), ['datasets.val.type: not set']),
    case('no_dataroot_gt', TRAIN, drop('datasets.train.dataroot_gt'), ['datasets.train.dataroot_gt: not set']),
    case('no_dataroot_lq', TRAIN, put('datasets.train.dataroot_lq', None), ['datasets.train.dataroot_lq: not set']),
    case('no_io_backend', TRAIN, drop('datasets.train.io_backend'), ['datasets.train.io_backend.type: not set']),
    case('no_gt_size', TRAIN, drop('datasets.train.gt_size'), ['datasets.train.gt_size: not set', 'gt_size: 128']),
    case('no_use_hflip', TRAIN, drop('datasets.train.use_hflip'), ['datasets.train.use_hflip: not set']),
    case('no_use_rot', TRAIN, drop('datasets.train.use_rot'), ['datasets.train.use_rot: not set']),
    case('no_batch_size', TRAIN, drop('datasets.train.batch_size_per_gpu'),
         ['datasets.train.batch_size_per_gpu: not set']),
    case('no_workers', TRAIN, drop('datasets.train.num_worker_per_gpu'),
         ['datasets.train.num_worker_per_gpu: not set']),
    case('no_total_iter', TRAIN, drop('train.total_iter'), ['train.total_iter: not set', 'total_iter: 500000']),
    case('no_optim_g', TRAIN, drop('train.optim_g'), ['train.optim_g.type: not set', 'optim_g: {type: Adam']),
    case('no_scheduler', TRAIN, drop('train.scheduler'), ['train.scheduler.type: not set']),
    case('no_print_freq', TRAIN, drop('logger.print_freq'), ['logger.print_freq: not set']),
    case('no_checkpoint_freq', TRAIN, drop('logger.save_checkpoint_freq'), ['logger.save_checkpoint_freq: not set']),
    case('no_val_freq', TRAIN, drop('val.val_freq'), ['val.val_freq: not set']),
    case('no_save_img', TEST, drop('val.save_img'), ['val.save_img: not set']),
    case('force_yml_unknown_key', TRAIN, None, ['nothing: not set', '--force_yml can only change'],
         ['--force_yml', 'train:nothing:x=1']),
    # 3. wrong value types
    case('gt_size_quoted', TRAIN, put('datasets.train.gt_size', '96'),
         ["datasets.train.gt_size: '96' is quoted", 'without quotes: gt_size: 96']),
    case('gt_size_fraction', TRAIN, put('datasets.train.gt_size', 9.5),
         ['datasets.train.gt_size: 9.5 is not a whole number; write e.g. gt_size: 128']),
    case('batch_size_word', TRAIN, put('datasets.train.batch_size_per_gpu', 'four'),
         ["datasets.train.batch_size_per_gpu: 'four' is not a whole number"]),
    case('batch_size_zero', TRAIN, put('datasets.train.batch_size_per_gpu', 0),
         ['datasets.train.batch_size_per_gpu: 0 is less than 1']),
    case('workers_negative', TRAIN, put('datasets.train.num_worker_per_gpu', -1), ['num_worker_per_gpu: -1 is less']),
    case('total_iter_5e5', TRAIN, put('train.total_iter', '5e5'), ["train.total_iter: '5e5' is text", 'write 500000']),
    case('warmup_iter_word', TRAIN, put('train.warmup_iter', 'none'), ["train.warmup_iter: 'none' is not a whole"]),
    case('val_freq_5e3', TRAIN, put('val.val_freq', '5e3'), ["val.val_freq: '5e3' is text", 'write 5000']),
    case('print_freq_word', TRAIN, put('logger.print_freq', 'often'), ["logger.print_freq: 'often' is not"]),
    case('checkpoint_freq_zero', TRAIN, put('logger.save_checkpoint_freq', 0), ['save_checkpoint_freq: 0 is less']),
    case('lr_2e-4', TRAIN, put('train.optim_g.lr', '2e-4'),
         ["train.optim_g.lr: '2e-4' is text", 'write 2.0e-4 or !!float 2e-4']),
    case('lr_word', TRAIN, put('train.optim_g.lr', 'fast'), ["train.optim_g.lr: 'fast' is not a number"]),
    case('ema_decay_word', TRAIN, put('train.ema_decay', 'high'), ["train.ema_decay: 'high' is not a number"]),
    case('milestone_text', TRAIN, put('train.scheduler.milestones', [3, '4e5']),
         ["train.scheduler.milestones[1]: '4e5' is text", '4.0e+5 or !!float 4e5']),
    case('scale_x4', TRAIN, put('scale', 'x4'), ["scale: 'x4' is not a whole number; write e.g. scale: 4"]),
    case('num_gpu_word', TRAIN, put('num_gpu', 'four'), ["num_gpu: 'four' is not a whole number"]),
    # 4. 5. nonexistent / empty / wrong dataset roots
    case('dataroot_missing', TRAIN, put('datasets.train.dataroot_gt', '/nope'),
         ['datasets.train.dataroot_gt: no such folder: /nope; fix the path']),
    case('dataroot_relative', TRAIN, put('datasets.val.dataroot_lq', 'nope/LR'),
         ['datasets.val.dataroot_lq: no such folder: nope/LR (relative to ']),
    case('dataroot_is_file', TRAIN, put('datasets.train.dataroot_lq', an_image),
         ['datasets.train.dataroot_lq: not a folder: ']),
    case('dataroot_empty', TRAIN, put('datasets.train.dataroot_gt', empty_folder),
         ['datasets.train.dataroot_gt: no images in ', 'empty; put the images there']),
    case('dataroot_only_folders', TRAIN, put('datasets.train.dataroot_gt', folder_of_folders),
         ['datasets.train.dataroot_gt: no images in ', '(sub-folders are not searched)']),
    case('imagenet_empty', TRAIN, imagenet_empty, ['datasets.train.dataroot_gt: no images in ', 'nor its sub-folders']),
    case('meta_info_file_missing', TRAIN, put('datasets.train.meta_info_file', '/nope.txt'),
         ['datasets.train.meta_info_file: no such file: /nope.txt']),
    case('meta_info_file_lists_missing_image', TRAIN, meta_info_listing_a_missing_image,
         ['datasets.train.dataroot_gt: no such image: ', '0042.png (listed in meta_info_file)']),
    # 6. LMDB
    case('lmdb_without_meta_info', TRAIN, lmdb_without_meta_info,
         ['datasets.train.dataroot_gt: ', 'HR.lmdb has no meta_info.txt',
          'basicsr lmdb --input <image folder> --output ']),
    case('lmdb_meta_info_removed', TRAIN, use_lmdb(remove='meta_info.txt'), ['HR.lmdb has no meta_info.txt']),
    case('lmdb_empty', TRAIN, use_lmdb(empty=True), ['HR.lmdb holds no images (empty meta_info.txt); rebuild it']),
    case('lmdb_not_dot_lmdb', TRAIN, put('datasets.train.io_backend', {'type': 'lmdb'}),
         ['datasets.train.dataroot_gt: io_backend lmdb needs a folder ending in .lmdb']),
    # 7. pairs
    case('hr_without_lr', TRAIN, remove_lr,
         ['datasets.train: 1 HR image(s) in dataroot_gt have no LR image in dataroot_lq', '0003.png missing']),
    case('lr_without_hr', TRAIN, extra_lr,
         ['datasets.train: 1 LR image(s) in dataroot_lq have no HR image', '0009.png']),
    case('stray_file', TRAIN, stray_file, ['datasets.train.dataroot_gt: ', 'notes.txt is not a readable image']),
    case('pair_size_mismatch', TRAIN, lr_at_scale('train', 4),
         ['datasets.train: HR 0000.png is 64x64 but LR 0000.png is 16x16 (and 3 more pairs); '
          'scale: 2 needs HR = 2 x LR exactly', 'make_lr --scale 2']),
    case('pair_size_mismatch_val', TRAIN, lr_at_scale('val', 4),
         ['datasets.val: HR 0000.png is 64x64 but LR 0000.png is 16x16', 'scale: 2 needs LR = HR / 2, rounded down']),
    case('pair_size_mismatch_lmdb', TRAIN, use_lmdb(scale=4),
         ['datasets.train: HR 0000 is 64x64 but LR 0000 is 16x16']),
    # 12. 13. patch size
    case('gt_size_not_multiple', TRAIN, put('datasets.train.gt_size', 97),
         ['datasets.train.gt_size: 97 is not a multiple of scale 2', 'use 96 or 98']),
    case('image_smaller_than_patch', TRAIN, put('datasets.train.gt_size', 96),
         ['datasets.train.gt_size: 96 is larger than HR 0000.png (64x64) (and 3 more images); lower gt_size to 64']),
    # 8. pretrained weights
    case('pretrain_missing', TRAIN, put('path.pretrain_network_g', '/nope.pth'),
         ['path.pretrain_network_g: no such file: /nope.pth; fix the path, or set it to ~']),
    case('pretrain_missing_test', TEST, put('path.pretrain_network_g', 'nope.pth'),
         ['path.pretrain_network_g: no such file: nope.pth (relative to ']),
    case('pretrain_missing_auto_resume', TRAIN, put('path.pretrain_network_g', '/nope.pth'),
         ['path.pretrain_network_g: no such file: /nope.pth'], ['--auto_resume'], early=False),
    case('pretrain_other_arch', TRAIN, put('path.pretrain_network_g', weights(OTHER_ARCH)),
         ['path.pretrain_network_g: ', 'weights.pth does not fit DVMSR: ', 'missing (', 'unexpected (body.0.bias',
          'network_g and scale must be those'], early=False),
    case('pretrain_other_scale', TEST, put('path.pretrain_network_g', weights(dict(NETWORK, upscale=4))),
         ['does not fit DVMSR: 2 shape mismatches (upsample.0.bias (48,) vs (12,); upsample.0.weight'],
         early=False),
    case('pretrain_plain_state_dict', TEST, put('path.pretrain_network_g', plain_state_dict),
         ["plain.pth has no 'params' entry", 'set path.param_key_g: ~ to load it as a plain state dict'],
         early=False),
    case('pretrain_not_a_checkpoint', TEST, put('path.pretrain_network_g', not_a_checkpoint),
         ['path.pretrain_network_g: ', 'w.pth: not a readable PyTorch checkpoint (not a file written by torch.save)'],
         early=False),
    case('pretrain_pickled_network', TEST, put('path.pretrain_network_g', pickled_network),
         ['net.pth: not a readable PyTorch checkpoint (it holds pickled Python objects', 'weights_only=True',
          'torch.save({\'params\': net.state_dict()}, path)'], early=False),
    # 9. distillation without its teacher
    case('distillation_without_teacher', TRAIN, distillation_without_teacher, ['path.pretrain_network_t is not set']),
    # 10. 11. devices
    case('num_gpu_too_many', TRAIN, put('num_gpu', 99), ['num_gpu: 99 but ', 'set num_gpu: auto']),
    case('num_gpu_without_cuda', TRAIN, put('num_gpu', 1), ['num_gpu: 1 but 0 CUDA'], marks=no_cuda),
    case('prefetch_cuda_without_cuda', TRAIN, put('datasets.train.prefetch_mode', 'cuda'),
         ['datasets.train.prefetch_mode: cuda needs a CUDA device'], marks=no_cuda),
    # basicsr test: the test set
    case('test_set_missing', TEST, put('datasets.test_1.dataroot_gt', '/nope'),
         ['datasets.test_1.dataroot_gt: no such folder: /nope']),
    case('test_set_empty', TEST,
         both(put('datasets.test_1.dataroot_lq', empty_folder), put('datasets.test_1.type', 'SingleImageDataset')),
         ['datasets.test_1.dataroot_lq: no images in ']),
    # weights that load but hold NaN/Inf (the output would be all black)
    case('pretrain_nan', TRAIN, put('path.pretrain_network_g', nan_weights),
         ['path.pretrain_network_g: ', "nan.pth: tensor 'conv_first.weight' has 2 NaN and 1 Inf of its ",
          'use an earlier one'], early=False),
    case('pretrain_nan_test', TEST, put('path.pretrain_network_g', nan_weights),
         ['path.pretrain_network_g: ', "nan.pth: tensor 'conv_first.weight' has 2 NaN and 1 Inf"], early=False),
]


@pytest.mark.parametrize('command, mutation, parts, argv, early', CASES)
def test_bad_input_is_one_line(command, mutation, parts, argv, early, tmp_path, write_pairs, monkeypatch, capsys):
    write_pairs(tmp_path / 'train', 4, 64, seed=0)
    write_pairs(tmp_path / 'val', 2, 48, seed=1)
    opt = train_options(tmp_path) if command == TRAIN else options_for_test(tmp_path)
    if mutation:
        mutation(opt, tmp_path)
    path = tmp_path / 'opt.yml'
    path.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)  # runs that get as far as building the model write experiments/ here
    # BasicSR's logger is set up once per process, with a handler on the stderr of the test that set it up
    monkeypatch.setattr(logging.getLogger('basicsr'), 'handlers', [])

    assert main([command, '-opt', str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    lines = err.strip().splitlines()
    prefix = f'basicsr {command}: error: '
    assert [line for line in lines if line.startswith(prefix)] == lines[-1:], err  # one line, the last one
    for part in parts:
        assert part in lines[-1]
    assert early is not any(os.path.isdir(tmp_path / run) for run in ('experiments', 'results'))


def test_valid_options_pass(tmp_path, write_pairs):
    """The base options of the matrix pass every check, with iteration counts written BasicSR's way
    (``val_freq: !!float 5e3``, which PyYAML reads as 5000.0)."""
    write_pairs(tmp_path / 'train', 4, 64, seed=0)
    write_pairs(tmp_path / 'val', 2, 48, seed=1)
    opt = yaml.safe_load(yaml.safe_dump(train_options(tmp_path)).replace('val_freq: 4', 'val_freq: !!float 4e0'))
    assert opt['val']['val_freq'] == 4.0
    opt.update(is_train=True, auto_resume=False)
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt.update(phase=phase, scale=SCALE)
    check_options(opt)


@pytest.mark.parametrize('kind', ['ImageNetPretrainDataset', 'ImageNetPairedDataset'])
def test_hidden_files_in_imagenet_folders_are_skipped(kind, tmp_path, write_pairs):
    """BasicSR's recursive ``scandir`` takes a hidden file for a folder (NotADirectoryError): a macOS
    ``.DS_Store`` next to ImageNet's class folders must neither break the checks nor the dataset."""
    from basicsr.utils.registry import DATASET_REGISTRY

    from dvmsr_mma.training.checks import check_dataset

    root = tmp_path / 'imagenet'
    write_pairs(root / 'n01', 2, 64, seed=0)  # n01/HR/*.png and n01/LR/*.png: four images in sub-folders
    (root / '.DS_Store').write_bytes(b'\0')
    opt = {'name': 'imagenet', 'type': kind, 'dataroot_gt': str(root), 'io_backend': {'type': 'disk'},
           'phase': 'train', 'gt_size': 32, 'scale': SCALE, 'use_hflip': False, 'use_rot': False}
    check_dataset('datasets.train', opt, SCALE)
    dataset = DATASET_REGISTRY.get(kind)(opt)
    assert len(dataset) == 4 and dataset[0]['gt'].shape == (3, 32, 32)
