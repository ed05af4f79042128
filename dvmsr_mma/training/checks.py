"""Pre-flight checks of a ``basicsr train`` / ``basicsr test`` run: options, datasets, pretrained weights.

BasicSR 1.4.2 meets a bad input late and obscurely: a ``KeyError`` for a missing option, a ``TypeError`` deep in
torch where PyYAML read ``2e-4`` as text, a bare ``assert`` for unpaired images, a ``ValueError`` at some batch
(maybe hours in) for an HR/LR size mismatch or an image smaller than the patch, a ``RuntimeError`` listing every
key of a checkpoint for another network. Here each is one :class:`~dvmsr_mma.utils.errors.OptionError` line naming the
option, the value or file, and the fix, raised right after the options are parsed (before the run folder, logger,
datasets or networks exist) or, for a checkpoint's keys, as BasicSR loads it (the file is read once). Images are
checked from their headers (or the shapes in an LMDB's ``meta_info.txt``), so even large datasets are checked in
seconds. Types, ranges and known keys are the schema's (:mod:`.option_schema`, validated first, also on
the file before ``parse_options`` indexes into it); this module keeps what a schema cannot say: files exist, HR/LR
pairing and sizes, networks build and fit in memory, batches fit the dataset, weights fit the network.
"""
import copy
import functools
import os
import os.path as osp
import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import cv2
from PIL import Image
from torch import nn

from datasets_prep.common import IMG_EXTENSIONS, iter_image_files
from dvmsr_mma.tools.weights import check_finite, few_names, load_checkpoint, state_dict_mismatch, without_module_prefix
from dvmsr_mma.training.option_schema import NO_TEACHER, NUMBER_PATTERN, not_a_number, validate_options, warn
from dvmsr_mma.training.train_step import AMP_AWARE
from dvmsr_mma.utils.errors import OptionError
from dvmsr_mma.utils.signatures import signature_parameters

_MISSING = object()
IMAGENET_TYPES = ('ImageNetPretrainDataset', 'ImageNetPairedDataset')  # HR only, searching train/<wnid>/ folders
ROOTS = {  # dataset type -> the image roots it reads (HR first); other types get an existence check only
    'PairedImageDataset': ('dataroot_gt', 'dataroot_lq'),
    'SingleImageDataset': ('dataroot_lq',),
    **dict.fromkeys(IMAGENET_TYPES, ('dataroot_gt',)),
}
# options honoured only by a model whose optimize_parameters (train.*) or test (val.amp) is dvmsr_mma's
AMP_AWARE_OPTIONS = (('train.amp', 'optimize_parameters'), ('train.nan_policy', 'optimize_parameters'),
                     ('train.nan_skip_limit', 'optimize_parameters'), ('val.amp', 'test'))
_TEXT_KEYS = ('name', 'type', 'suffix', 'filename_tmpl', 'path', 'wandb')  # text even if it looks like a number


def install() -> None:
    """Check each run's options right after BasicSR parses them, and load weights through :func:`load_network`.

    Called by ``compat.apply`` before it wraps ``parse_options`` itself, so its device checks stay outermost."""
    import basicsr.test
    import basicsr.train
    from basicsr.models.base_model import BaseModel

    basicsr.train.parse_options = _checking_options(basicsr.train.parse_options)
    basicsr.test.parse_options = _checking_options(basicsr.test.parse_options)
    BaseModel.load_network = load_network


def _checking_options(parse_options: Callable) -> Callable:
    @functools.wraps(parse_options)
    def parse_options_checked(*args, **kwargs):
        raw = _raw_options()
        if raw is not None:  # before parse_options, which indexes into the mappings and paths it expects
            warn(validate_options(raw))
        try:
            opt, args_ = parse_options(*args, **kwargs)
        except KeyError as err:  # parse_options reads num_gpu (and the keys --force_yml changes) with []
            key = err.args[0] if err.args else err
            if key == 'num_gpu':
                raise OptionError('num_gpu: not set; add it, e.g. num_gpu: auto (or 0 for CPU)') from err
            raise OptionError(f'{key}: not set; add it to the option file (--force_yml can only change options '
                              'the file has)') from err
        check_options(opt)
        return opt, args_

    return parse_options_checked


def _raw_options() -> Optional[Dict[str, Any]]:
    """The options ``parse_options`` will read (its ``-opt`` file with its loader, ``--force_yml`` applied as it
    applies them), or None where it would fail first itself (no such file, a --force_yml key the file lacks)."""
    import argparse
    import sys

    import yaml
    from basicsr.utils.options import _postprocess_yml_value, ordered_yaml

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    parser.add_argument('--force_yml', nargs='+', default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    try:
        with open(args.opt, encoding='utf-8') as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        for entry in args.force_yml or ():
            keys, value = entry.split('=')
            *parents, last = keys.strip().split(':')
            target = opt
            for key in parents:
                target = target[key]
            target[last] = _postprocess_yml_value(value.strip())
    except (OSError, TypeError, KeyError, ValueError, yaml.YAMLError):
        return None
    return opt


def load_network(self, net: nn.Module, load_path: str, strict: bool = True, param_key: Optional[str] = 'params'):
    """Replacement for ``BaseModel.load_network``: the file is read once, with ``weights_only=True``, through
    :func:`checked_weights`; then loaded as upstream does (``module.`` stripped, mismatches logged, and with
    ``strict: false`` keys of another shape left out)."""
    from basicsr.utils import get_root_logger

    net = self.get_bare_model(net)
    option = next((f'path.{key}' for key, value in self.opt['path'].items()
                   if key.startswith('pretrain_network') and value == load_path), 'pretrained weights')
    state, param_key = checked_weights(net, load_path, param_key, strict, option, self.is_train)
    get_root_logger().info(f'Loading {type(net).__name__} model from {load_path}, with param key: [{param_key}].')
    self._print_different_keys_loading(net, state, strict)
    net.load_state_dict(state, strict=strict)


def check_options(opt: Mapping[str, Any]) -> None:
    """Raise one OptionError line for the first problem in parsed options (``parse_options``'s output)."""
    warn(validate_options(opt))
    _check_required(opt)
    _check_numbers_as_text(opt)
    _check_amp_options(opt)
    _check_types(opt)
    scale = opt['scale']
    for phase, dataset_opt in opt['datasets'].items():
        gt_size = dataset_opt.get('gt_size')
        if dataset_opt['phase'] == 'train' and gt_size is not None and gt_size % scale:
            low = gt_size - gt_size % scale
            raise OptionError(f'datasets.{phase}.gt_size: {gt_size} is not a multiple of scale {scale} (the LR patch '
                              f'is gt_size / scale pixels); use {low or scale}' + (f' or {low + scale}' if low else ''))
        check_dataset(f'datasets.{phase}', dataset_opt, scale)
    if not (opt.get('auto_resume') or opt['path'].get('resume_state')):  # resume loads the run's own checkpoints
        for key, path in opt['path'].items():
            if key.startswith('pretrain_network') and isinstance(path, str) and not osp.isfile(path):
                raise OptionError(_no_weights(f'path.{key}', path, opt['is_train']))
    if opt['is_train']:
        check_vgg_weights(opt['train'])


def _check_types(opt: Mapping[str, Any]) -> None:
    """The networks upsample by ``scale``, can be built with these arguments and fit in memory, and a distillation
    run names its teacher: BasicSR finds out only when it builds the model (a traceback, or the machine swapping)
    or at the first validation (a tensor size mismatch), after it has made the run's folder (which a rerun then
    archives). Types and argument names are the schema's (:mod:`dvmsr_mma.training.option_schema`)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    for key, network_opt in opt.items():
        if key.startswith('network_') and isinstance(network_opt, Mapping) and 'type' in network_opt:
            cls = ARCH_REGISTRY.get(network_opt['type'])
            kwargs = {k: v for k, v in network_opt.items() if k != 'type'}
            if key != 'network_d':  # a discriminator does not upsample
                _check_upscale(key, network_opt['type'], cls, kwargs, opt['scale'])
            _check_network_fits(key, network_opt['type'], cls, kwargs, opt.get('is_train', False))
    if opt['is_train'] and opt.get('model_type') == 'DistillationModel' and 'network_t' in opt and not (
            opt['path'].get('pretrain_network_t') or opt.get('auto_resume') or opt['path'].get('resume_state')):
        raise OptionError(NO_TEACHER)


MAX_MODULES = 20_000  # MMA-B has 778, RRDBNet (ESRGAN) about 500; building 20,000 on meta takes a few seconds


class _TooManyModules(Exception):
    pass


def _check_network_fits(key: str, arch: str, cls: Callable, kwargs: Mapping[str, Any], is_train: bool) -> None:
    """Build the network on PyTorch's ``meta`` device (no memory, no time): a constructor that refuses its
    arguments (``embed_dim: -1``) is one line, and so are weights (with, in training, their gradients and Adam's
    two moments) larger than the memory free now. ``torch.linspace`` stays on the CPU while building: drop-path
    rates are read from it with ``.item()``, which a meta tensor cannot do. A network that cannot be built on
    ``meta`` for another reason is left to BasicSR."""
    import torch

    from dvmsr_mma.tools.infer import available_bytes, format_bytes

    linspace, module_init, built = torch.linspace, nn.Module.__init__, [0]

    def counting_init(self, *args, **kwargs):
        built[0] += 1
        if built[0] > MAX_MODULES:
            raise _TooManyModules()
        module_init(self, *args, **kwargs)

    torch.linspace = functools.partial(linspace, device='cpu')
    nn.Module.__init__ = counting_init
    try:
        with torch.device('meta'):
            net = cls(**copy.deepcopy(dict(kwargs)))
    except _TooManyModules:
        raise OptionError(f'{key}: {arch} with these arguments has more than {MAX_MODULES:,} layers (modules); use '
                          'smaller depths / num_block') from None
    except NotImplementedError:
        return
    except (TypeError, ValueError, RuntimeError, AssertionError, IndexError, ZeroDivisionError, OverflowError,
            MemoryError) as err:
        if 'meta' in str(err):
            return
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OptionError(f'{key}: {arch} cannot be built with these arguments: {type(err).__name__}: {detail}; '
                          f'fix the argument it names (see {arch}\'s defaults)') from None
    finally:
        torch.linspace, nn.Module.__init__ = linspace, module_init
    if not isinstance(net, nn.Module):
        return
    empty = next(((name, p) for name, p in net.named_parameters() if p.numel() == 0), None)
    if empty is not None:  # e.g. MMA's channel attention squeezes num_feat by 30: num_feat 20 gives 0 channels
        raise OptionError(f'{key}: {arch} with these arguments has an empty layer ({empty[0]} has shape '
                          f'{tuple(empty[1].shape)}), which fails at the first forward; use larger sizes (num_feat, '
                          'embed_dim, ...)')
    count = sum(p.numel() for p in net.parameters())
    needed = count * 4 * (4 if is_train else 1)
    free = available_bytes(torch.device('cpu'))
    if free is not None and needed > free:
        what = 'weights, gradients and Adam moments (float32)' if is_train else 'weights (float32)'
        raise OptionError(f'{key}: {arch} with these arguments has {count:,} parameters: its {what} need '
                          f'{format_bytes(needed)}, more than the {format_bytes(free)} free here; use smaller '
                          'sizes (embed_dim, num_feat, depths, num_block, ...)')


def _check_upscale(key: str, arch: str, cls: Callable, kwargs: Mapping[str, Any], scale: int) -> None:
    """The network's ``upscale`` (or ``scale``, as RRDBNet calls it), given or its default, equals ``scale``."""
    params, _ = signature_parameters(cls)
    if 'upsampler' in params and kwargs.get('upsampler', params['upsampler'].default) in ('', None):
        return  # SwinIR / HAT without an upsampler: restoration at scale 1, upscale unused
    name = next((n for n in ('upscale', 'scale') if n in params), None)
    if name is None:
        return
    given = name in kwargs
    factor = kwargs[name] if given else params[name].default
    if isinstance(factor, int) and factor != scale:
        where = f'{key}.{name}: {factor}' if given else f'{key}: {arch} upsamples by {factor} ({name} not set)'
        raise OptionError(f'{where} but scale: {scale}; the network must upsample by scale (HR = scale x LR): set '
                          f'{key}.{name}: {scale}, or scale: {factor}')


def _lookup(opt: Mapping[str, Any], option: str) -> Any:
    value = opt
    for key in option.split('.'):
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _expand(opt: Mapping[str, Any], option: str) -> List[str]:
    """``datasets.*.x`` -> ``datasets.<phase>.x`` for every dataset."""
    if not option.startswith('datasets.*.'):
        return [option]
    return [option.replace('*', str(phase), 1) for phase in opt['datasets']]


def _required(opt: Mapping[str, Any]) -> Iterator[Tuple[str, str]]:
    """(option, how to write it) for every option this run cannot do without: BasicSR reads them with ``[]``."""
    from basicsr.models.sr_model import SRModel
    from basicsr.utils.registry import MODEL_REGISTRY

    yield 'scale', 'scale: 4'
    yield 'network_g.type', 'network_g: {type: DVMSR, upscale: 4}'
    if opt['is_train']:
        yield 'datasets.train', 'datasets: {train: {name: DF2K, type: PairedImageDataset, ...}}'
    for phase, dataset_opt in opt['datasets'].items():
        where = f'datasets.{phase}'
        yield f'{where}.name', 'name: DF2K'
        yield f'{where}.type', 'type: PairedImageDataset'
        kind = dataset_opt.get('type')
        for key in ROOTS.get(kind, ()):
            yield f'{where}.{key}', f'{key}: datasets/DF2K/{"HR" if key == "dataroot_gt" else "LR_bicubic_X4"}'
        if kind in ROOTS:
            yield f'{where}.io_backend.type', 'io_backend: {type: disk} (or lmdb)'
        if dataset_opt.get('phase') == 'train':
            if kind == 'PairedImageDataset' or kind in IMAGENET_TYPES:
                yield f'{where}.gt_size', 'gt_size: 128 (the HR patch size, a multiple of scale)'
            if kind == 'PairedImageDataset':
                yield f'{where}.use_hflip', 'use_hflip: true'
                yield f'{where}.use_rot', 'use_rot: true'
            yield f'{where}.batch_size_per_gpu', 'batch_size_per_gpu: 16'
            yield f'{where}.num_worker_per_gpu', 'num_worker_per_gpu: 4'
    if opt['is_train']:
        yield 'train.total_iter', 'total_iter: 500000'
        if issubclass(MODEL_REGISTRY.get(opt['model_type']), SRModel):
            yield 'train.optim_g.type', 'optim_g: {type: Adam, lr: 2.0e-4}'
            yield 'train.scheduler.type', 'scheduler: {type: MultiStepLR, milestones: [250000], gamma: 0.5}'
        yield 'logger.print_freq', 'print_freq: 100'
        yield 'logger.save_checkpoint_freq', 'save_checkpoint_freq: 5000'
        if opt.get('val') is not None:
            yield 'val.val_freq', 'val_freq: 5000'
    else:
        yield 'val.save_img', 'save_img: true'


def _check_required(opt: Mapping[str, Any]) -> None:
    for option, example in _required(opt):
        if _lookup(opt, option) in (_MISSING, None):
            raise OptionError(f'{option}: not set; add it, e.g. {example}')


def _check_numbers_as_text(opt: Mapping[str, Any]) -> None:
    for option, value in _numbers_as_text(opt, ''):
        raise OptionError(f'{option}: {not_a_number(value, option.rsplit(".", 1)[-1], "", whole=False)}')


def _check_amp_options(opt: Mapping[str, Any]) -> None:
    """The amp / NaN-guard options are set only for a model that honours them (one whose step or test would
    otherwise ignore them, silently)."""
    from basicsr.utils.registry import MODEL_REGISTRY

    model_type = opt.get('model_type')
    if not isinstance(model_type, str) or model_type not in MODEL_REGISTRY:
        return
    model = MODEL_REGISTRY.get(model_type)
    for option, method in AMP_AWARE_OPTIONS:
        value = _lookup(opt, option)
        if value not in (_MISSING, None, False) and not getattr(getattr(model, method, None), AMP_AWARE, False):
            raise OptionError(f'{option}: {model_type} has its own {method}, which ignores it; these options work '
                              'with SRModel and DistillationModel (and models using their step); remove it')


def _numbers_as_text(value: Any, where: str) -> Iterator[Tuple[str, str]]:
    """Strings such as ``2e-4`` anywhere in the options: PyYAML 1.1 reads a float as text unless it has a dot
    and a signed exponent, and BasicSR passes it on to torch as is."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            key = str(key)
            if key not in _TEXT_KEYS and not key.startswith('dataroot') and not key.endswith('_file'):
                yield from _numbers_as_text(item, f'{where}.{key}' if where else key)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers_as_text(item, f'{where}[{i}]')
    elif isinstance(value, str) and NUMBER_PATTERN.fullmatch(value.strip()) and 'e' in value.lower():
        yield where, value


def _from_cwd(path: str) -> str:
    return '' if osp.isabs(path) else f' (relative to {os.getcwd()})'


def _no_weights(option: str, path: str, is_train: bool) -> str:
    hint = ', or set it to ~ to start without pretrained weights' if is_train else ''
    return f'{option}: no such file: {path}{_from_cwd(path)}; fix the path{hint}'


# ---------------------------------------------------------------------------------------------------- VGG weights
DOWNLOAD_TIMEOUT = 5  # seconds to wait for torchvision's download server before calling this machine offline


def check_vgg_weights(train_opt: Mapping[str, Any]) -> None:
    """A loss with a ``vgg_type`` (BasicSR's ``PerceptualLoss``) loads ImageNet VGG weights when it is built: BasicSR's
    ``VGG_PRETRAIN_PATH`` (relative to the working folder) if it exists, else torchvision's file in torch hub's cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded when missing. On a machine that cannot download (most compute
    nodes of a cluster) that was a ``URLError`` traceback after the whole run was built; here it is one line naming
    the file and where to put it, before anything is built, and no download that is bound to fail is begun."""
    from basicsr.utils.registry import LOSS_REGISTRY

    for key, loss_opt in train_opt.items():
        if not (isinstance(loss_opt, Mapping) and isinstance(loss_opt.get('type'), str) and str(key).endswith('_opt')):
            continue
        params, _ = signature_parameters(LOSS_REGISTRY.get(loss_opt['type']))
        if 'vgg_type' in params:
            _check_vgg_file(f'train.{key}', loss_opt['type'], loss_opt.get('vgg_type', params['vgg_type'].default))


def _check_vgg_file(where: str, loss: str, vgg_type: str) -> None:
    import torch
    import torchvision
    from basicsr.archs.vgg_arch import VGG_PRETRAIN_PATH

    if osp.isfile(VGG_PRETRAIN_PATH):  # BasicSR loads it for any vgg_type
        if vgg_type != 'vgg19':
            raise OptionError(f'{where}.vgg_type: {vgg_type}, but BasicSR loads {osp.abspath(VGG_PRETRAIN_PATH)} '
                              '(VGG19 weights) for any vgg_type when that file exists; use vgg_type: vgg19, or move '
                              'the file')
        return
    try:
        url = torchvision.models.get_model_weights(vgg_type).IMAGENET1K_V1.url
    except (ValueError, AttributeError):  # not a torchvision VGG: BasicSR's own error names it
        return
    cached = osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(url))
    if osp.isfile(cached) or _can_download(url):
        return
    raise OptionError(f'{where}: {loss} needs the ImageNet weights of {vgg_type}, {osp.basename(url)}, which are '
                      f'neither at {cached} (torchvision\'s cache, under $TORCH_HOME) nor at '
                      f'{osp.abspath(VGG_PRETRAIN_PATH)} (BasicSR\'s path, relative to the working folder), and '
                      f'this machine cannot download {url}; fetch it where there is internet and copy it to either '
                      'place (docs/training.md, "VGG weights on an offline machine")')


def _can_download(url: str) -> bool:
    """Whether ``url`` answers within :data:`DOWNLOAD_TIMEOUT`, through the proxies torch.hub's download uses
    (urllib's, from the environment). In a thread: the socket timeout does not bound the name lookup, which on a
    node without a reachable DNS server can take much longer."""
    import threading
    import urllib.request

    answered = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=DOWNLOAD_TIMEOUT):
                answered.append(True)
        except (OSError, ValueError):  # URLError and HTTPError are OSErrors, a timeout too
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(DOWNLOAD_TIMEOUT)
    return bool(answered)


# ---------------------------------------------------------------------------------------------------- datasets
def check_dataset(where: str, dataset_opt: Mapping[str, Any], scale: int) -> None:
    """Roots exist and hold images (an LMDB: its ``meta_info.txt``); a PairedImageDataset's pairs match by name,
    are ``scale`` apart and, for training, at least ``gt_size``: the things BasicSR finds only batch by batch."""
    lmdb = (dataset_opt.get('io_backend') or {}).get('type') == 'lmdb'
    for key in ('dataroot_gt', 'dataroot_lq'):
        root = dataset_opt.get(key)
        if isinstance(root, str) and not osp.isdir(root):
            problem = 'no such folder' if not osp.exists(root) else 'not a folder'
            raise OptionError(f'{where}.{key}: {problem}: {root}{_from_cwd(root)}; fix the path')
    for key in ('meta_info_file', 'meta_info'):  # meta_info: RealESRGANDataset's list of images (disk backend)
        meta_file = dataset_opt.get(key)
        if isinstance(meta_file, str) and not lmdb and not osp.isfile(meta_file):
            raise OptionError(f'{where}.{key}: no such file: {meta_file}{_from_cwd(meta_file)}; fix the path')
    kind = dataset_opt.get('type')
    if kind == 'RealESRGANDataset' and not lmdb and isinstance(dataset_opt.get('meta_info'), str):
        _check_listed_images(where, dataset_opt)
    if kind not in ROOTS:
        return
    recursive = kind in IMAGENET_TYPES
    listed = {key: _lmdb_shapes(f'{where}.{key}', dataset_opt[key]) if lmdb
              else _folder_images(f'{where}.{key}', dataset_opt[key], recursive) for key in ROOTS[kind]}
    if kind == 'PairedImageDataset':
        _check_pairs(where, dataset_opt, scale, listed['dataroot_gt'], listed['dataroot_lq'], lmdb)
    if dataset_opt.get('phase') == 'train' and listed['dataroot_gt']:
        _check_batch(where, dataset_opt, len(listed['dataroot_gt']))


def _check_listed_images(where: str, dataset_opt: Mapping[str, Any]) -> None:
    """RealESRGANDataset (disk): the images ``meta_info`` lists (paths relative to ``dataroot_gt``) exist, and a batch
    fits their number."""
    with open(dataset_opt['meta_info'], encoding='utf-8') as f:
        names = [line.strip().split(' ')[0] for line in f if line.strip()]
    if not names:
        raise OptionError(f'{where}.meta_info: {dataset_opt["meta_info"]} lists no images; list one image path '
                          '(relative to dataroot_gt) per line')
    root = dataset_opt.get('dataroot_gt') or ''
    missing = [name for name in names if not osp.isfile(osp.join(root, name))]
    if missing:
        raise OptionError(f'{where}.meta_info: {len(missing)} of its {len(names)} images are not in dataroot_gt '
                          f'{root}: {few_names(missing)}; the paths are relative to dataroot_gt')
    if dataset_opt.get('phase') == 'train':
        _check_batch(where, dataset_opt, len(names))


MAX_EPOCH_SAMPLES = 10 ** 7  # BasicSR's EnlargedSampler lists a permutation of all of them every epoch


def _check_batch(where: str, dataset_opt: Mapping[str, Any], count: int) -> None:
    """A batch fits the dataset (BasicSR drops the last incomplete batch, so a larger one leaves an epoch without
    batches and ends in a ZeroDivisionError) and the memory free now; an epoch's sample list stays reasonable."""
    import torch

    from dvmsr_mma.tools.infer import available_bytes, format_bytes

    ratio = dataset_opt.get('dataset_enlarge_ratio') or 1
    batch = dataset_opt.get('batch_size_per_gpu')
    if count * ratio > MAX_EPOCH_SAMPLES:
        most = max(1, MAX_EPOCH_SAMPLES // count)
        raise OptionError(f'{where}.dataset_enlarge_ratio: {ratio} makes an epoch of {count * ratio:,} samples '
                          f'({count} images), more than {MAX_EPOCH_SAMPLES:,} (BasicSR lists a permutation of all '
                          f'of them every epoch); write at most {most}')
    if batch is not None and batch > count * ratio:
        raise OptionError(f'{where}.batch_size_per_gpu: {batch} is more than the dataset\'s {count} images x '
                          f'dataset_enlarge_ratio {ratio}, so an epoch would have no batch; write at most '
                          f'{count * ratio}, or raise dataset_enlarge_ratio')
    gt_size, free = dataset_opt.get('gt_size'), available_bytes(torch.device('cpu'))
    if batch is not None and gt_size and free is not None and batch * gt_size ** 2 * 3 * 4 * 2 > free:
        raise OptionError(f'{where}.batch_size_per_gpu: {batch} patches of {gt_size}x{gt_size} (and their LR) need '
                          f'{format_bytes(batch * gt_size ** 2 * 24)}, more than the {format_bytes(free)} free here; '
                          'lower batch_size_per_gpu or gt_size')


def _rebuild(root: str) -> str:
    return f'rebuild it with: basicsr lmdb --input <image folder> --output {root} --overwrite'


def _lmdb_shapes(option: str, root: str) -> Dict[str, Optional[Tuple[int, int]]]:
    """LMDB key -> (w, h) from ``meta_info.txt`` (None where a line has no shape)."""
    if not root.rstrip('/').endswith('.lmdb'):
        raise OptionError(f'{option}: io_backend lmdb needs a folder ending in .lmdb, got {root}; make one with: '
                          f'basicsr lmdb --input {root} --output {root.rstrip("/")}.lmdb, or use io_backend: '
                          '{type: disk}')
    meta = osp.join(root, 'meta_info.txt')
    if not osp.isfile(meta):
        raise OptionError(f'{option}: {root} has no meta_info.txt (unfinished, or not made for BasicSR); '
                          f'{_rebuild(root)}')
    shapes = {}
    with open(meta, encoding='utf-8') as f:
        for line in f:
            if line.strip():
                shape = re.search(r'\((\d+),\s*(\d+)', line)  # "<key>.png (h,w,c) <level>"
                shapes[line.split('.')[0]] = (int(shape[2]), int(shape[1])) if shape else None  # BasicSR's key
    if not shapes:
        raise OptionError(f'{option}: {root} holds no images (empty meta_info.txt); {_rebuild(root)}')
    return shapes


def _folder_images(option: str, root: str, recursive: bool) -> Dict[str, None]:
    """The files BasicSR's ``scandir`` lists (every visible file: a stray one breaks the pairing as well); for the
    ImageNet datasets, which search sub-folders, only whether there is an image at all (they list them)."""
    from basicsr.utils import scandir

    if recursive:
        if next(iter_image_files(root), None) is None:
            raise OptionError(f'{option}: no images in {root} (nor its sub-folders); put the images there or '
                              'fix the path')
        return {}
    files = dict.fromkeys(sorted(scandir(root)))
    if not any(name.lower().endswith(IMG_EXTENSIONS) for name in files):
        sub = ' (sub-folders are not searched)' if any(e.is_dir() for e in os.scandir(root)) else ''
        raise OptionError(f'{option}: no images in {root}{sub}; put the images there or fix the path')
    return files


def _image_size(option: str, root: str, name: str) -> Optional[Tuple[int, int]]:
    """(w, h) from the file's header; cv2 decodes what Pillow cannot open. A file with an image extension that
    cannot be read is warned about and left to training, which skips it (:mod:`dvmsr_mma.training.bad_images`): None."""
    path = osp.join(root, name)
    if not osp.isfile(path):
        raise OptionError(f'{option}: no such image: {path} (listed in meta_info_file); fix the list or add the image')
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # Pillow raises several types for files it cannot read
        try:
            img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        except cv2.error:  # past OpenCV's pixel cap
            img = None
    if img is not None:
        return img.shape[1], img.shape[0]
    if not name.lower().endswith(IMG_EXTENSIONS):
        raise OptionError(f'{option}: {path} is not a readable image; remove it (BasicSR reads every file there)')
    warn([f'{option}: {path} is not a readable image; its samples will be skipped (remove or replace it)'])
    return None


def _more(items: List[Any], noun: str) -> str:
    return f' (and {len(items) - 1} more {noun})' if len(items) > 1 else ''


def _check_pairs(where: str, dataset_opt: Mapping[str, Any], scale: int, gt: Dict[str, Any], lq: Dict[str, Any],
                 lmdb: bool) -> None:
    """HR/LR pairing as PairedImageDataset does it (same LMDB key; else the LR name is
    ``filename_tmpl.format(HR stem) + HR extension``), then the sizes of every pair."""
    meta_file = None if lmdb else dataset_opt.get('meta_info_file')
    if lmdb:
        pairs = [(key, key) for key in sorted(gt)]
    else:
        tmpl = dataset_opt.get('filename_tmpl', '{}')
        if meta_file:
            with open(meta_file, encoding='utf-8') as f:
                names = [line.split(' ')[0].strip() for line in f if line.strip()]
        else:
            names = list(gt)
        pairs = [(name, tmpl.format(osp.splitext(name)[0]) + osp.splitext(name)[1]) for name in names]
    gt_root, lq_root = dataset_opt['dataroot_gt'], dataset_opt['dataroot_lq']
    no_lq = [lq_name for _, lq_name in pairs if lq_name not in lq]
    if no_lq and not meta_file:
        raise OptionError(f'{where}: {len(no_lq)} HR image(s) in dataroot_gt have no LR image in dataroot_lq '
                          f'{lq_root}: {few_names(no_lq)} missing; each HR image needs an LR image of the same name '
                          '(or set filename_tmpl)')
    paired = {lq_name for _, lq_name in pairs}
    no_gt = [name for name in lq if name not in paired]
    if no_gt and not meta_file:
        raise OptionError(f'{where}: {len(no_gt)} LR image(s) in dataroot_lq have no HR image in dataroot_gt '
                          f'{gt_root}: {few_names(no_gt)}; remove them or add their HR images')

    train = dataset_opt['phase'] == 'train'
    gt_size = dataset_opt.get('gt_size') if train else None
    wrong, small, sides = [], [], []
    for gt_name, lq_name in pairs:
        if lmdb:
            gt_wh, lq_wh = gt[gt_name], lq[lq_name]
            if gt_wh is None or lq_wh is None:
                continue
        else:
            gt_wh = _image_size(f'{where}.dataroot_gt', gt_root, gt_name)
            lq_wh = _image_size(f'{where}.dataroot_lq', lq_root, lq_name)
            if gt_wh is None or lq_wh is None:
                continue
        (gw, gh), (lw, lh) = gt_wh, lq_wh
        if (gw, gh) != (lw * scale, lh * scale) and (train or (gw // scale, gh // scale) != (lw, lh)):
            wrong.append(f'HR {gt_name} is {gw}x{gh} but LR {lq_name} is {lw}x{lh}')
        elif gt_size is not None and min(gw, gh) < gt_size:
            small.append(f'HR {gt_name} ({gw}x{gh})')
        sides.append(min(gw, gh))
    if wrong:
        rule = f'HR = {scale} x LR exactly' if train else f'LR = HR / {scale}, rounded down'
        raise OptionError(f'{where}: {wrong[0]}{_more(wrong, "pairs")}; scale: {scale} needs {rule}; make the LR '
                          f'images with basicsr prep make_lr --scale {scale}, or fix scale')
    if small:
        fit = min(sides) - min(sides) % scale
        fix = f'lower gt_size to {fit} or less, or remove' if fit else 'remove'
        raise OptionError(f'{where}.gt_size: {gt_size} is larger than {small[0]}{_more(small, "images")}; '
                          f'{fix} the smaller images')


# ---------------------------------------------------------------------------------------------------- weights
def checked_weights(net: nn.Module, path: str, param_key: Optional[str], strict: bool, option: str,
                    is_train: bool) -> Tuple[Dict[str, Any], Optional[str]]:
    """The state dict (``module.`` stripped) and the param key it came from: the checkpoint exists, has
    ``param_key`` (with BasicSR's fallback to ``params``) and, when ``strict``, fits ``net`` key for key and shape;
    the mismatch names a few keys, where torch would list them all; and no weight is NaN or Inf."""
    if not osp.isfile(path):
        raise OptionError(_no_weights(option, path, is_train))
    try:
        state = load_checkpoint(path)
    except OptionError as err:
        raise OptionError(f'{option}: {err}') from err
    suffix = option.rsplit('pretrain_network', 1)[-1] if 'pretrain_network' in option else '_g'
    if path.endswith('.safetensors') and all(hasattr(value, 'shape') for value in state.values()):
        param_key = None  # a plain .safetensors file (chaiNNer, traiNNer-redux) is one state dict, whatever the key
    if param_key is not None:
        if isinstance(state, Mapping) and param_key not in state and 'params' in state:
            param_key = 'params'  # as BasicSR's load_network
        if not isinstance(state, Mapping) or not isinstance(state.get(param_key), Mapping):
            plain = isinstance(state, Mapping) and all(hasattr(v, 'shape') for v in state.values())
            fix = (f'set path.param_key{suffix}: ~ to load it as a plain state dict' if plain
                   else f'set path.param_key{suffix} to the entry holding the weights')
            held = f' (it holds {few_names(state)})' if isinstance(state, Mapping) else ''
            raise OptionError(f'{option}: {path} has no {param_key!r} entry{held}; {fix}')
        state = state[param_key]
    if not isinstance(state, Mapping):
        raise OptionError(f'{option}: {path} holds no state dict')
    state = without_module_prefix(state)
    if strict:
        mismatch = state_dict_mismatch(net.state_dict(), state)
        if mismatch:
            raise OptionError(f'{option}: {path} does not fit {type(net).__name__}: {mismatch}; network{suffix} and '
                              'scale must be those the checkpoint was trained with')
    try:
        check_finite(state, path)
    except OptionError as err:
        raise OptionError(f'{option}: {err}') from err
    return state, param_key
