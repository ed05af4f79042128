"""Feature distillation from a frozen teacher (DVMSR, sec. 3.3.2) as a BasicSR model.

``DistillationModel`` is BasicSR's ``SRModel`` (student = ``network_g``, with its EMA, validation, metrics,
schedulers, checkpoints and resume) plus a frozen ``network_t`` whose features supervise the student::

    network_t: {type: DVMSR, embed_dim: 192, depths: [2, 2, 2, 2, 2, 2, 2, 2]}  # any registered arch
    path:
      pretrain_network_t: experiments/<teacher run>/models/net_g_latest.pth    # required
      param_key_t: params_ema   # default; falls back to 'params' like BasicSR's load_network
      strict_load_t: true
    train:
      pixel_opt: {type: L1Loss, loss_weight: 1.0}
      distill_opt:
        position: end           # output | end | mid
        layers: [0, 1, 2, 3]    # mid (and optionally end): block indices or module names of the student
        layers_t: [1, 3, 5, 7]  # the teacher's matching taps (default: as many, spread evenly)
        type: L1Loss            # any BasicSR loss; the remaining keys are its arguments
        loss_weight: 1.0

Taps, all taken during the ordinary ``forward`` (so DDP's gradient hooks and EMA see nothing unusual):

- ``output``: the SR images.
- ``end``: the deep features right before reconstruction, i.e. the output of the arch's
  ``forward_features`` (recorded by wrapping that method on the instance; the class is untouched), or,
  with ``layers: [name]``, the output of that named module for archs without ``forward_features``.
- ``mid``: outputs of chosen blocks, via forward hooks. An integer ``i`` means ``<blocks>.<i>`` where
  ``<blocks>`` is ``distill_opt.blocks`` or the first of ``layers`` (DVMSR's RSSBs) / ``body`` (MMA's
  blocks) that the arch has; a string is any module name (``layers.3``, ``body.5.norm``). Several taps
  are averaged, so ``loss_weight`` means the same for any number of them.

Where a student tap has fewer or more channels than the teacher's, a 1x1 conv adapter maps the student
features to the teacher's width (channel dim 1 of (b, c, h, w), or the last dim of (b, l, c) tokens).
Adapters are trained in ``optimizer_g`` (an extra param group, so schedulers and warm-up cover them), are
saved in the training state (``<iter>.state['distillation']``) and restored on resume, and never appear in
the exported ``net_g_*.pth``.

The teacher is built and loaded once, kept in eval mode with ``requires_grad_(False)``, run under
``torch.no_grad()``, moved to the device (never wrapped in DDP: it has no gradients to sync; each process
runs its own copy on its own batch), and never saved nor optimized. Feature taps need the distributed
launcher on several GPUs: DataParallel replicas would split them (an OptionError says so).

On resume BasicSR's ``check_resume`` points every ``pretrain_network_*`` at ``net_*_<iter>.pth`` in the run,
which does not exist for the teacher; the teacher path and key are therefore recorded in the training state
and the teacher is reloaded from there.

Loss: ``l_total = l_pix (+ l_percep) + l_dis``; each is logged separately.
"""
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn
from torch.nn.parallel import DataParallel

from dvmsr_mma.training.option_schema import NO_TEACHER
from dvmsr_mma.training.resume import training_state
from dvmsr_mma.training.train_step import amp_aware, finish_step, sr_losses, training_autocast
from dvmsr_mma.utils.checkpoint_io import atomic_torch_save
from dvmsr_mma.utils.errors import OptionError

POSITIONS = ('output', 'end', 'mid')
BLOCK_LISTS = ('layers', 'body')  # DVMSR's RSSBs, MMA's blocks
_DISTILL_KEYS = ('position', 'layers', 'layers_t', 'blocks', 'blocks_t', 'probe_size')
FORWARD_FEATURES = 'forward_features'


def _first_tensor(value: Any) -> torch.Tensor:
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def _block_list(net: nn.Module, name: Optional[str], where: str) -> str:
    """``name``, or the first of BLOCK_LISTS that ``net`` has as a ModuleList / Sequential."""
    lists = (nn.ModuleList, nn.Sequential)
    names = [name] if name else [n for n in BLOCK_LISTS if isinstance(getattr(net, n, None), lists)]
    if not names or not isinstance(getattr(net, names[0], None), lists):
        raise OptionError(f'train.distill_opt.{where}: {type(net).__name__} has no block list '
                          f'({" or ".join(BLOCK_LISTS)}); give module names instead of indices, or set blocks')
    return names[0]


def resolve_taps(net: nn.Module, layers: Sequence, blocks: Optional[str], where: str) -> List[str]:
    """Module names for ``layers`` entries: ints index the block list, strings are module names."""
    names = []
    for layer in layers:
        if isinstance(layer, int):
            blocks_name = _block_list(net, blocks, where)
            count = len(getattr(net, blocks_name))
            if not -count <= layer < count:
                raise OptionError(f'train.distill_opt.{where}: index {layer} out of range for '
                                  f'{type(net).__name__}.{blocks_name} ({count} blocks)')
            layer = f'{blocks_name}.{layer % count}'
        try:
            net.get_submodule(layer)
        except AttributeError:
            raise OptionError(f'train.distill_opt.{where}: {type(net).__name__} has no module {layer!r}') from None
        names.append(layer)
    return names


class FeatureTaps:
    """Records features of a (bare) network during its ordinary forward, while ``active``.

    ``names`` are module names (forward hooks on their outputs) or ``forward_features`` (the instance's
    method is wrapped; the class is not touched)."""

    def __init__(self, net: nn.Module, names: Sequence[str]):
        self.names = list(names)
        self.active = False
        self.features: Dict[str, torch.Tensor] = {}
        for name in self.names:
            if name == FORWARD_FEATURES:
                self._wrap_forward_features(net)
            else:
                net.get_submodule(name).register_forward_hook(self._hook(name))

    def _record(self, name: str, value: Any) -> None:
        if self.active:
            self.features[name] = _first_tensor(value)

    def _hook(self, name: str):

        def hook(module, inputs, output):
            self._record(name, output)

        return hook

    def _wrap_forward_features(self, net: nn.Module) -> None:
        method = net.forward_features

        def forward_features(*args, **kwargs):
            out = method(*args, **kwargs)
            self._record(FORWARD_FEATURES, out)
            return out

        net.forward_features = forward_features  # instance attribute: forward() finds it via self.

    def run(self, net: nn.Module, x: torch.Tensor):
        """``net(x)`` -> (tapped features in order, or [output] without taps; output)."""
        self.features = {}
        self.active = True
        try:
            output = net(x)
        finally:
            self.active = False
        if not self.names:
            return [output], output
        missing = [name for name in self.names if name not in self.features]
        if missing:
            raise RuntimeError(f'distillation taps {missing} did not run in {type(net).__name__}.forward')
        features, self.features = [self.features[name] for name in self.names], {}
        return features, output


class ChannelAdapters(nn.Module):
    """One 1x1 conv (or identity) per tap, student width -> teacher width.

    (b, c, h, w) features: conv over dim 1; (b, l, c) tokens: the same conv over the last dim."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        self.maps = nn.ModuleList(
            nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1) for cs, ct in zip(student_channels, teacher_channels))

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for adapter, feat in zip(self.maps, features):
            if isinstance(adapter, nn.Identity):
                out.append(feat)
            elif feat.dim() == 3:  # (b, l, c) -> (b, c, l, 1) -> conv -> (b, l, c')
                out.append(adapter(feat.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2))
            else:
                out.append(adapter(feat))
        return out


def _channels(feat: torch.Tensor) -> int:
    return feat.shape[-1] if feat.dim() == 3 else feat.shape[1]


@MODEL_REGISTRY.register()
class DistillationModel(SRModel):
    """SRModel whose student is also pulled towards a frozen teacher's features (module docstring)."""

    def init_training_settings(self):
        self._init_distillation()
        super().init_training_settings()  # EMA, pixel/perceptual losses, optimizers (+ adapters), schedulers

    # ----------------------------------------------------------------------------------------- set-up
    def _init_distillation(self):
        opt, path_opt = self.opt, self.opt['path']
        distill_opt = dict(opt['train'].get('distill_opt') or {})
        if 'network_t' not in opt:
            raise OptionError('DistillationModel needs network_t (the teacher network), e.g. '
                              'network_t: {type: DVMSR, embed_dim: 192, depths: [2, 2, 2, 2, 2, 2, 2, 2]}')
        if not distill_opt:
            raise OptionError('DistillationModel needs train.distill_opt (position, type, loss_weight); '
                              'use model_type: SRModel to train without a teacher')
        position = distill_opt.get('position', 'end')
        if position not in POSITIONS:
            raise OptionError(f'train.distill_opt.position: {position!r}; expected one of {", ".join(POSITIONS)}')
        self.distill_position = position

        self.teacher_path = path_opt.get('pretrain_network_t')
        self.teacher_param_key = path_opt.get('param_key_t', 'params_ema')
        self.teacher_strict = path_opt.get('strict_load_t', True)
        resuming = bool(path_opt.get('resume_state'))
        if self.teacher_path is None:
            raise OptionError(NO_TEACHER)

        if position != 'output' and not opt['dist'] and isinstance(self.net_g, DataParallel):
            raise OptionError(f'num_gpu: {opt["num_gpu"]} without a launcher uses DataParallel, whose replicas would '
                              f'split the tapped features of distill_opt.position: {position}; train on several GPUs '
                              'with the distributed launcher (torchrun ... basicsr train --launcher pytorch)')

        # teacher: built and loaded once, frozen, eval mode; no DDP (nothing to sync), one copy per process
        net_t = build_network(opt['network_t']).to(self.device)
        net_t.eval()
        net_t.requires_grad_(False)
        self._net_t_bare = net_t
        self.net_t = DataParallel(net_t) if isinstance(self.net_g, DataParallel) else net_t  # output taps only
        self.teacher_loaded = False
        if osp.isfile(self.teacher_path):
            self._load_teacher(self.teacher_path, self.teacher_param_key)
        elif not resuming:  # on resume check_resume rewrote the path; the state records the real one
            raise OptionError(f'path.pretrain_network_t: no such file: {self.teacher_path}')

        # taps
        net_g = self.get_bare_model(self.net_g)
        layers, layers_t = distill_opt.get('layers'), distill_opt.get('layers_t')
        if position == 'output':
            names_g, names_t = [], []
        elif position == 'end' and not layers:
            for net, which in ((net_g, 'network_g'), (net_t, 'network_t')):
                if not callable(getattr(net, FORWARD_FEATURES, None)):
                    raise OptionError(f'train.distill_opt: {which} ({type(net).__name__}) has no forward_features; '
                                      'set layers: [<module name>] to tap the features before reconstruction')
            names_g = names_t = [FORWARD_FEATURES]
        else:
            if position == 'mid' and not layers:
                layers = list(range(len(getattr(net_g, _block_list(net_g, distill_opt.get('blocks'), 'layers')))))
            names_g = resolve_taps(net_g, layers, distill_opt.get('blocks'), 'layers')
            if layers_t is None:
                if all(isinstance(layer, int) for layer in layers):
                    n_s = len(getattr(net_g, _block_list(net_g, distill_opt.get('blocks'), 'layers')))
                    n_t = len(getattr(net_t, _block_list(net_t, distill_opt.get('blocks_t'), 'layers_t')))
                    # spread evenly: student block i of n_s <-> teacher block (i + 1) * n_t / n_s - 1
                    layers_t = [((layer % n_s) + 1) * n_t // n_s - 1 for layer in layers]
                else:
                    layers_t = layers
            names_t = resolve_taps(net_t, layers_t, distill_opt.get('blocks_t'), 'layers_t')
            if len(names_t) != len(names_g):
                raise OptionError(f'train.distill_opt: {len(names_g)} student layers but {len(names_t)} layers_t')
        self.taps_g = FeatureTaps(net_g, names_g)
        self.taps_t = FeatureTaps(net_t, names_t)

        # adapters, sized by one small probe forward of both networks
        probe = self._probe(net_g, net_t, distill_opt)
        adapters = ChannelAdapters(*probe).to(self.device)
        # DDP syncs the adapters' gradients; it refuses a module without parameters (all taps of equal width)
        self.adapters = self.model_to_device(adapters) if any(True for _ in adapters.parameters()) else adapters
        logger = get_root_logger()
        logger.info(f'Distillation: position={position}, student taps={names_g or ["output"]}, '
                    f'teacher taps={names_t or ["output"]}, adapters={self.get_bare_model(self.adapters).maps}')

        loss_opt = {k: v for k, v in distill_opt.items() if k not in _DISTILL_KEYS}
        loss_opt.setdefault('type', 'L1Loss')
        self.cri_dis = build_loss(loss_opt).to(self.device)

    def _probe(self, net_g: nn.Module, net_t: nn.Module, distill_opt: Dict[str, Any]):
        train_set = self.opt.get('datasets', {}).get('train', {})
        size = distill_opt.get('probe_size') or min(64, train_set.get('gt_size', 64) // self.opt['scale'])
        in_ch = self.opt['network_g'].get('num_in_ch', self.opt['network_g'].get('channels', 3))
        x = torch.zeros(1, in_ch, size, size, device=self.device)
        was_training = net_g.training
        net_g.eval()  # no BatchNorm statistics / dropout effects from the probe
        try:
            with torch.no_grad():
                feats_g, _ = self.taps_g.run(net_g, x)
                feats_t, _ = self.taps_t.run(net_t, x)
        finally:
            net_g.train(was_training)
        for i, (fs, ft) in enumerate(zip(feats_g, feats_t)):
            if fs.dim() != ft.dim() or fs.dim() not in (3, 4) or (
                    fs.dim() == 4 and fs.shape[2:] != ft.shape[2:]) or (fs.dim() == 3 and fs.shape[1] != ft.shape[1]):
                raise OptionError(f'train.distill_opt: tap {i} shapes differ beyond channels: student '
                                  f'{tuple(fs.shape)}, teacher {tuple(ft.shape)} (probe input {tuple(x.shape)})')
        return [_channels(f) for f in feats_g], [_channels(f) for f in feats_t]

    def _load_teacher(self, path: str, param_key: str) -> None:
        self.load_network(self._net_t_bare, path, self.teacher_strict, param_key)
        self._net_t_bare.eval()
        self._net_t_bare.requires_grad_(False)
        self.teacher_path, self.teacher_param_key, self.teacher_loaded = path, param_key, True

    def setup_optimizers(self):
        super().setup_optimizers()
        adapter_params = [p for p in self.adapters.parameters() if p.requires_grad]
        if adapter_params:  # same optimizer (and so the same schedulers), own param group
            self.optimizer_g.add_param_group({'params': adapter_params})

    # -------------------------------------------------------------------------------------- training
    @amp_aware
    def optimize_parameters(self, current_iter):
        """SRModel's step (``train.amp`` and the NaN guard of :mod:`dvmsr_mma.training.train_step`) with ``l_dis``; the
        teacher runs under the same autocast."""
        if not self.teacher_loaded:
            raise OptionError(f'path.pretrain_network_t: no such file: {self.teacher_path}')
        self.optimizer_g.zero_grad()
        with training_autocast(self):
            feats_g, self.output = self.taps_g.run(self.net_g, self.lq)
            with torch.no_grad():
                feats_t, _ = self.taps_t.run(self.net_t, self.lq)
            loss_dict = sr_losses(self)
            adapted = self.adapters(feats_g)
            l_dis = sum(self.cri_dis(fs, ft.detach()) for fs, ft in zip(adapted, feats_t)) / len(feats_t)
            loss_dict['l_dis'] = l_dis
            l_total = sum(loss_dict.values())
            loss_dict['l_total'] = l_total
        finish_step(self, loss_dict, l_total, current_iter)

    # ------------------------------------------------------------------------------ state and resume
    def distillation_state(self) -> Dict[str, Any]:
        adapters = self.get_bare_model(self.adapters)
        return {
            'adapters': {k: v.cpu() for k, v in adapters.state_dict().items()},
            'pretrain_network_t': self.teacher_path,
            'param_key_t': self.teacher_param_key,
        }

    @master_only
    def save_training_state(self, epoch, current_iter):
        """The training state of :func:`~dvmsr_mma.training.resume.training_state` plus ``distillation``: the adapters
        and where the teacher came from. Written atomically."""
        if current_iter == -1:
            return
        state = training_state(self, epoch, current_iter)
        state['distillation'] = self.distillation_state()
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        record = resume_state.get('distillation')
        adapters = self.get_bare_model(self.adapters)
        if record is None:
            if any(True for _ in adapters.parameters()):
                raise OptionError('path.resume_state: the state has no distillation adapters (not written by '
                                  'DistillationModel); start a new run or use the same model_type')
        else:
            adapters.load_state_dict(record['adapters'])
            if record.get('pretrain_network_t') and osp.isfile(record['pretrain_network_t']):
                self._load_teacher(record['pretrain_network_t'], record.get('param_key_t', 'params_ema'))
        if not self.teacher_loaded:
            recorded = (record or {}).get('pretrain_network_t')
            raise OptionError(f'path.pretrain_network_t: no such file: {recorded or self.teacher_path} '
                              '(needed to resume the distillation run)')
