"""Reading network weights: BasicSR checkpoints (``params_ema`` / ``params``) or ``.safetensors``, always with
``weights_only=True``, a strict fit that names a few mismatched keys in one line where torch lists them all, and
no NaN/Inf values. Shared by ``basicsr infer`` / ``bench`` and the checks BasicSR's own weight loading goes through."""
import os
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Iterable, Mapping, Optional

import torch
from torch import nn

from datasets_prep.common import name_list
from dvmsr_mma.utils.checkpoint_io import nest_param_keys
from dvmsr_mma.utils.errors import OptionError


def few_names(names: Iterable[Any]) -> str:
    """Three sorted names and how many more: enough to see the pattern, still one line."""
    return name_list(sorted(str(name) for name in names), 3)


def load_checkpoint(path: str) -> Any:
    """What a ``.pth`` (loaded with ``weights_only=True``) or ``.safetensors`` file holds; an unreadable file is
    one :class:`OptionError` line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no such weights file: {path}')
    if path.endswith('.safetensors'):
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # pickle/zip errors have many types
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            reason = 'not a file written by torch.save'
        elif 'Weights only load failed' in str(err):  # torch's advice (weights_only=False) would run its code
            reason = ('it holds pickled Python objects, not just tensors, and weights load with weights_only=True; '
                      "re-save only the weights, e.g. torch.save({'params': net.state_dict()}, path)")
        else:
            reason = f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'
        raise OptionError(f'{path}: not a readable PyTorch checkpoint ({reason})') from err


def _load_safetensors(path: str) -> Dict[str, Any]:
    """A plain state dict, or ``{param_key: state_dict}`` for a training checkpoint of this package (its metadata
    lists the param keys: :mod:`dvmsr_mma.utils.checkpoint_io`)."""
    try:
        from safetensors import safe_open
    except ImportError as err:
        raise OptionError(f'{path}: reading .safetensors needs the safetensors package '
                          '(pip install safetensors)') from err
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            flat = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata()
    except Exception as err:  # safetensors raises its own error types (header, I/O)
        raise OptionError(f'{path}: not a readable .safetensors file ({type(err).__name__}: '
                          f'{str(err).splitlines()[0] if str(err) else ""})') from err
    return nest_param_keys(flat, metadata)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A BasicSR checkpoint (``params_ema``, else ``params``, else the dict itself) or a ``.safetensors`` file,
    with any DataParallel ``module.`` prefix stripped. ``.pth`` files load with ``weights_only=True``."""
    state = load_checkpoint(path)
    if isinstance(state, Mapping):
        for key in ('params_ema', 'params'):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise OptionError(f'{path}: holds no state dict')
    return without_module_prefix(state)


def without_module_prefix(state: Mapping[str, Any]) -> Dict[str, Any]:
    """``state`` with DataParallel's ``module.`` key prefix stripped, as BasicSR's ``load_network`` does."""
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in state.items())


def state_dict_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """Why ``state`` cannot load strictly where ``own`` is the network's state dict: the count and a few keys of
    each kind (missing, unexpected, other shape); '' when it fits."""
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing ({few_names(missing)})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected ({few_names(unexpected)})')
    if shapes:
        parts.append(f'{len(shapes)} shape mismatches ({"; ".join(shapes[:3])}{"; ..." if len(shapes) > 3 else ""})')
    return '; '.join(parts)


def check_finite(state: Mapping[str, Any], path: str) -> None:
    """One :class:`OptionError` line naming the first float tensor of ``state`` holding NaN or Inf: such weights
    load without complaint and turn every output into NaN (written as an all-black image), or a training run into
    NaN losses. Integer buffers (counters, indices) cannot be non-finite and are skipped; one ``isfinite`` pass per
    tensor keeps it cheap next to reading the file."""
    bad = [key for key, value in state.items() if isinstance(value, torch.Tensor) and value.is_floating_point()
           and not bool(torch.isfinite(value).all())]
    if bad:
        value = state[bad[0]]
        counts = ((int(torch.isnan(value).sum()), 'NaN'), (int(torch.isinf(value).sum()), 'Inf'))
        which = ' and '.join(f'{n} {kind}' for n, kind in counts if n)
        more = f' (and {len(bad) - 1} more tensor{"s" if len(bad) > 2 else ""})' if len(bad) > 1 else ''
        raise OptionError(f'{path}: tensor {bad[0]!r} has {which} of its {value.numel()} values{more}; '
                          'the checkpoint is broken (e.g. saved after training diverged): use an earlier one')


def load_weights(net: nn.Module, path: str, state: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Strict load; a mismatch raises one :class:`OptionError` line naming a few keys of each kind + counts, and
    NaN/Inf weights one line naming the tensor (:func:`check_finite`). ``state``: what :func:`read_state_dict`
    returned for ``path`` already (so the file is read once)."""
    state = read_state_dict(path) if state is None else state
    mismatch = state_dict_mismatch(net.state_dict(), state)
    if mismatch:
        raise OptionError(f'{path} does not fit {type(net).__name__}: {mismatch}')
    check_finite(state, path)
    net.load_state_dict(state, strict=True)
    return net
