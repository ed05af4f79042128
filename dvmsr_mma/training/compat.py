"""Make basicsr 1.4.2 (its last release, 2022) work with today's torch, torchvision and numpy.

Every BasicSR fix of this package lives here, applied once by ``import dvmsr_mma`` before anything
imports ``basicsr``. Each patch names the breakage it fixes and has a test that fails without it, in
``tests/test_compat.py`` (the distributed ones in ``tests/test_distributed.py``). What the package adds on top
of BasicSR is installed from :func:`apply` as well but lives in its own modules, each with an ``install()``:
one-line errors for bad inputs (``checks.py``), exact resume (``resume.py``), mixed precision and the NaN guard
of ``SRModel``'s training step (``train_step.py``), the state saved on SIGTERM/SIGINT (``stop_signals.py``)
and samples with bad images skipped (``bad_images.py``).
Imports point down only: those modules (and the models) import leaf modules (``checkpoint_io.py``, ``stops.py``,
``errors.py``, ...), never this one.
"""
import difflib
import functools
import importlib
import logging
import os
import os.path as osp
import pickle
import re
import shutil
import subprocess
import sys
import types
from typing import Any, Dict, Optional

import torch

from dvmsr_mma.utils.checkpoint_io import CHECKPOINT_FORMATS, atomic_safetensors_save, atomic_torch_save
from dvmsr_mma.utils.errors import OptionError, RegistryKeyError

_applied = False


def _alias_functional_tensor() -> None:
    """torchvision 0.17 removed ``torchvision.transforms.functional_tensor``, which
    ``basicsr/data/degradations.py`` imports at ``import basicsr`` time; its functions now live in
    ``torchvision.transforms._functional_tensor``."""
    name = 'torchvision.transforms.functional_tensor'
    try:
        importlib.import_module(name)
    except ImportError:
        sys.modules[name] = importlib.import_module('torchvision.transforms._functional_tensor')


def _import_cv2_clearly() -> None:
    """``opencv-python`` (which basicsr requires) needs libGL; on a headless machine ``import cv2``
    fails deep inside ``import basicsr`` with a bare ``libGL.so.1`` error. Say how to fix it."""
    try:
        import cv2  # noqa: F401
    except ImportError as err:
        if 'libGL' not in str(err) and 'libgthread' not in str(err):
            raise
        raise ImportError(f'OpenCV cannot load a system library ({err}). On a headless machine use the headless '
                          'build: pip uninstall -y opencv-python opencv-python-headless && '
                          'pip install opencv-python-headless') from err


def _training_states_dir(opt: Dict[str, Any]) -> str:
    """Where a run's resume states are; upstream looks under a cwd-relative ``experiments/`` although
    runs are written under ``root_path``, and then archives the run it did not find."""
    return osp.join(opt['path']['experiments_root'], 'training_states')


def _resume_map_location(opt: Dict[str, Any]) -> Optional[torch.device]:
    if opt.get('num_gpu', 0) and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def _load_state(path: str, opt: Dict[str, Any]) -> Dict[str, Any]:
    return torch.load(path, map_location=_resume_map_location(opt), weights_only=False)


def _network_file(models: str, stem: str) -> Optional[str]:
    """``<models>/<stem>.pth`` or ``.safetensors`` (``logger.save_checkpoint_format``), whichever exists."""
    return next((path for path in (osp.join(models, f'{stem}.{ext}') for ext in CHECKPOINT_FORMATS)
                 if osp.isfile(path)), None)


def _newest_good_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The newest readable ``<iter>.state`` of the run whose ``net_g_<iter>.pth`` (or ``.safetensors``) exists
    too; a truncated or corrupt one (a kill during a save from before saves were atomic, a full disk) is skipped
    with a warning."""
    from basicsr.utils import get_root_logger, scandir

    state_dir = _training_states_dir(opt)
    if not osp.isdir(state_dir):
        return None
    stems = (name[:-len('.state')] for name in scandir(state_dir, suffix='.state'))
    iters = sorted((int(stem) for stem in stems if stem.isdigit()), reverse=True)
    for it in iters:
        path = osp.join(state_dir, f'{it}.state')
        if _network_file(opt['path']['models'], f'net_g_{it}') is None:
            get_root_logger().warning(f'Skipping resume state {path}: its net_g_{it}.pth (or .safetensors) is missing.')
            continue
        try:
            state = _load_state(path, opt)
        except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as err:
            get_root_logger().warning(f'Skipping unreadable resume state {path}: {err}')
            continue
        opt['path']['resume_state'] = path
        return state
    return None


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Replacement for ``basicsr.train.load_resume_state``.

    Upstream calls ``torch.cuda.current_device()`` (crashes without CUDA), maps every tensor onto CUDA,
    and relies on ``torch.load``'s old ``weights_only=False`` default: since torch 2.6 the scheduler's
    ``Counter`` in a resume state is refused. Resume states are written by this training code itself,
    so they are unpickled fully; network weights elsewhere keep ``weights_only=True``.
    """
    from basicsr.train import check_resume

    if opt['auto_resume']:
        resume_state = _newest_good_state(opt)
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
        if not osp.isfile(path):
            raise FileNotFoundError(f'path.resume_state: no such file: {path}')
        resume_state = _load_state(path, opt)
    else:
        resume_state = None
    if resume_state is not None:
        check_resume(opt, resume_state['iter'])
        _resume_networks_as_saved(opt)
    return resume_state


def _resume_networks_as_saved(opt: Dict[str, Any]) -> None:
    """``check_resume`` points every ``path.pretrain_network_*`` at ``net_*_<iter>.pth``; where the run saved
    ``.safetensors`` instead, point at that."""
    for key, path in opt['path'].items():
        if key.startswith('pretrain_network') and isinstance(path, str) and path.endswith('.pth') and \
                not osp.isfile(path):
            found = _network_file(osp.dirname(path), osp.basename(path)[:-len('.pth')])
            if found is not None:
                opt['path'][key] = found


class _TorchWithAtomicSave(types.ModuleType):
    """``torch`` as seen by ``basicsr.models.base_model``: everything delegated, but ``save`` atomic.

    Upstream's ``save_network`` / ``save_training_state`` write checkpoints in place, so a kill during a
    save leaves a truncated ``net_g_latest.pth`` or ``<iter>.state`` behind."""

    save = staticmethod(atomic_torch_save)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _saving_network(save_network):
    """Wrap ``BaseModel.save_network``: with ``logger.save_checkpoint_format: safetensors`` the same
    ``{param_key: state_dict}`` goes to ``<label>_<iter>.safetensors`` (layout: :mod:`dvmsr_mma.utils.checkpoint_io`),
    atomically like the ``.pth`` files; upstream writes ``.pth`` only."""

    @functools.wraps(save_network)
    def wrapper(self, net, net_label, current_iter, param_key='params'):
        if (self.opt.get('logger') or {}).get('save_checkpoint_format', 'pth') != 'safetensors':
            return save_network(self, net, net_label, current_iter, param_key)
        from basicsr.utils.dist_util import get_dist_info
        if get_dist_info()[0] != 0:  # upstream is master_only
            return None
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {key: {k[7:] if k.startswith('module.') else k: v  # as upstream: no 'module.' prefix
                           for k, v in self.get_bare_model(net_).state_dict().items()}
                     for net_, key in zip(nets, keys)}
        name = f'{net_label}_{"latest" if current_iter == -1 else current_iter}.safetensors'
        atomic_safetensors_save(save_dict, osp.join(self.opt['path']['models'], name))
        return None

    return wrapper


def _init_dist_pytorch(backend: str, **kwargs: Any) -> None:
    """Replacement for ``basicsr.utils.dist_util._init_dist_pytorch``: upstream always calls
    ``torch.cuda.set_device`` and uses NCCL, so ``--launcher pytorch`` dies on CPU-only machines.
    Without CUDA this uses gloo."""
    import os

    import torch.distributed as dist
    if torch.cuda.is_available():
        rank = int(os.environ['RANK'])
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


def _init_dist(launcher: str, backend: str = 'nccl', **kwargs: Any) -> None:
    """Replacement for ``basicsr.utils.dist_util.init_dist`` without its switch of all later process starts to
    ``spawn``: a spawned DataLoader worker of ``python -m dvmsr_mma`` (``torchrun -m dvmsr_mma``) unpickles its
    dataset by importing basicsr before this module has patched it, and dies. Workers started the platform's
    default way (fork on Linux, as in PyTorch's own DDP examples) inherit the patched basicsr."""
    from basicsr.utils import dist_util

    if launcher == 'pytorch':
        dist_util._init_dist_pytorch(backend, **kwargs)
    elif launcher == 'slurm':
        dist_util._init_dist_slurm(backend, **kwargs)
    else:
        raise ValueError(f'Invalid launcher type: {launcher}')


def first_slurm_host(node_list: str) -> str:
    """The first host of a simple Slurm node list (``node[03-07,9],gpu1`` -> ``node03``), for machines where
    ``scontrol``, which expands any list, is not installed."""
    prefix, first, suffix = re.match(r'([^,\[]*)(?:\[([^\],-]*)[^\]]*\]([^,\[]*))?', node_list).groups()
    return prefix + (first or '') + (suffix or '')


def _init_dist_slurm(backend: str, port: Optional[int] = None) -> None:
    """Replacement for ``basicsr.utils.dist_util._init_dist_slurm``: upstream divides by the CUDA device count
    and calls ``torch.cuda.set_device`` (so ``--launcher slurm`` dies on CPU nodes) and takes the master address
    from ``scontrol`` even where it is not installed. Without CUDA this uses gloo; without ``scontrol`` the
    master is ``MASTER_ADDR`` or else the first host of ``SLURM_NODELIST``."""
    import torch.distributed as dist

    proc_id, node_list = int(os.environ['SLURM_PROCID']), os.environ['SLURM_NODELIST']
    if torch.cuda.is_available():
        local_rank = proc_id % torch.cuda.device_count()
        torch.cuda.set_device(local_rank)
    else:
        local_rank, backend = int(os.environ.get('SLURM_LOCALID', proc_id)), 'gloo'
    hosts = []
    if shutil.which('scontrol'):
        hosts = subprocess.run(['scontrol', 'show', 'hostnames', node_list], capture_output=True,
                               text=True).stdout.split()
    os.environ['MASTER_ADDR'] = hosts[0] if hosts else os.environ.get('MASTER_ADDR') or first_slurm_host(node_list)
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')  # torch.distributed's default port
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = str(local_rank)
    os.environ['RANK'] = str(proc_id)
    dist.init_process_group(backend=backend)


def _model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
    """Replacement for ``basicsr.models.base_model.BaseModel.model_to_device``: upstream always gives DDP
    ``device_ids=[torch.cuda.current_device()]``, which crashes a distributed CPU (gloo) run. A CPU module
    gets no ``device_ids``, as DDP requires."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        return DistributedDataParallel(net, device_ids=device_ids,
                                       find_unused_parameters=self.opt.get('find_unused_parameters', False))
    if self.opt['num_gpu'] > 1:
        return DataParallel(net)
    return net


def _on_model_device(cls: type) -> None:
    """``RealESRNetModel`` / ``RealESRGANModel``: upstream moves ``DiffJPEG`` and ``USMSharp`` (``__init__``) and the
    training-pair queue (``_dequeue_and_enqueue``) to CUDA with ``.cuda()``, so with ``num_gpu: 0`` training dies with
    "Found no NVIDIA driver". Off CUDA they are made on the model's device instead; on CUDA upstream's code runs.
    On the CPU, ``F.interpolate`` keeps the channels-last strides of ``DiffJPEG``'s output, which ``filter2D``
    cannot ``view``: its input is made contiguous (a no-op for a contiguous tensor)."""
    from basicsr.utils import DiffJPEG, USMSharp

    init, dequeue_and_enqueue, base = cls.__init__, cls._dequeue_and_enqueue, cls.__mro__[1]
    module = sys.modules[cls.__module__]
    filter2d = module.filter2D
    module.filter2D = lambda img, kernel: filter2d(img.contiguous(), kernel)

    @functools.wraps(init)
    def __init__(self, opt):
        if opt['num_gpu'] != 0:  # BaseModel's device rule: CUDA
            return init(self, opt)
        base.__init__(self, opt)
        self.jpeger = DiffJPEG(differentiable=False).to(self.device)  # as upstream, on the model's device
        self.usm_sharpener = USMSharp().to(self.device)
        self.queue_size = opt.get('queue_size', 180)
        return None

    @functools.wraps(dequeue_and_enqueue)
    def _dequeue_and_enqueue(self):
        # the queues made where upstream would make them on CUDA; a batch that does not divide the queue is left to
        # upstream's assert (the option schema says so before training)
        if self.device.type != 'cuda' and not hasattr(self, 'queue_lr') and self.queue_size % self.lq.size(0) == 0:
            self.queue_lr = self.lq.new_zeros(self.queue_size, *self.lq.shape[1:])  # (queue, c, h, w)
            self.queue_gt = self.gt.new_zeros(self.queue_size, *self.gt.shape[1:])
            self.queue_ptr = 0
        return dequeue_and_enqueue(self)

    cls.__init__, cls._dequeue_and_enqueue = __init__, _dequeue_and_enqueue


def check_device_options(opt: Dict[str, Any]) -> None:
    """Turn BasicSR's device traps into one clear error each, before anything is built.

    Upstream crashes late and obscurely on: ``num_gpu`` above the visible CUDA devices (``cuda`` device
    on a CPU machine), ``prefetch_mode: cuda`` without CUDA, and hangs forever with
    ``prefetch_mode: cpu`` plus ``persistent_workers: true``.
    """
    available = torch.cuda.device_count()
    num_gpu = opt.get('num_gpu', 0)
    if isinstance(num_gpu, int) and num_gpu > available:
        raise OptionError(f'num_gpu: {num_gpu} but {available} CUDA device(s) are visible; '
                          'set num_gpu: auto (or 0 for CPU)')
    for phase, dataset_opt in opt.get('datasets', {}).items():
        mode = dataset_opt.get('prefetch_mode')
        if mode == 'cuda' and available == 0:
            raise OptionError(f'datasets.{phase}.prefetch_mode: cuda needs a CUDA device; remove it or use cpu')
        if mode == 'cpu' and dataset_opt.get('persistent_workers'):
            raise OptionError(f'datasets.{phase}: prefetch_mode: cpu with persistent_workers: true hangs in BasicSR; '
                              'drop one of them')


def _registry_get(self, name: str, suffix: str = 'basicsr') -> Any:
    """Replacement for ``basicsr.utils.registry.Registry.get``: upstream prints a stray line and raises a bare
    ``KeyError`` for a typo in a YAML ``type:``. This names the registry and the closest registered names, in an
    error that is both an :class:`OptionError` and upstream's ``KeyError``."""
    obj = self._obj_map.get(name) or self._obj_map.get(f'{name}_{suffix}') if isinstance(name, str) else None
    if obj is None:
        known = sorted({key[:-len(suffix) - 1] if key.endswith(f'_{suffix}') else key for key in self._obj_map})
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
        raise RegistryKeyError(f'type: {name!r} is not registered in BasicSR\'s {self._name} registry{hint}')
    return obj


def _checked(parse_options):
    """Wrap BasicSR's ``parse_options`` so every run goes through :func:`check_device_options`."""

    def parse_options_checked(*args, **kwargs):
        opt, args_ = parse_options(*args, **kwargs)
        check_device_options(opt)
        return opt, args_

    parse_options_checked.__wrapped__ = parse_options
    return parse_options_checked


def apply() -> None:
    """Apply every patch; idempotent."""
    global _applied
    if _applied:
        return
    _alias_functional_tensor()
    _import_cv2_clearly()

    import basicsr.test
    import basicsr.train
    from basicsr.models import base_model
    from basicsr.utils import dist_util, registry

    base_model.torch = _TorchWithAtomicSave('torch')
    registry.Registry.get = _registry_get
    basicsr.train.load_resume_state = load_resume_state
    dist_util._init_dist_pytorch = _init_dist_pytorch
    dist_util._init_dist_slurm = _init_dist_slurm
    dist_util.init_dist = basicsr.utils.options.init_dist = _init_dist
    base_model.BaseModel.model_to_device = _model_to_device
    base_model.BaseModel.save_network = _saving_network(base_model.BaseModel.save_network)
    from basicsr.models.realesrgan_model import RealESRGANModel
    from basicsr.models.realesrnet_model import RealESRNetModel
    _on_model_device(RealESRNetModel)
    _on_model_device(RealESRGANModel)
    from dvmsr_mma.training import checks  # one-line errors for bad inputs; installed first so _checked stays outermost
    checks.install()
    basicsr.train.parse_options = _checked(basicsr.train.parse_options)
    basicsr.test.parse_options = _checked(basicsr.test.parse_options)
    from dvmsr_mma.training import resume, stop_signals, train_step  # import basicsr: only after the fixes above
    resume.install()
    train_step.install()
    stop_signals.install()
    from dvmsr_mma.training import bad_images  # bad images never end a run
    bad_images.install()
    logging.getLogger('basicsr').debug('dvmsr_mma: basicsr compatibility patches applied')
    _applied = True
