"""Writing checkpoints atomically, as ``.pth`` (torch.save) or ``.safetensors``, and the layout of the latter.

A leaf module (torch and the standard library only): ``compat``, ``resume`` and the models all save through it.

BasicSR's network checkpoint is ``{param_key: state_dict}`` (``params``, and ``params_ema`` when EMA is on). A
``.safetensors`` file is flat, so each tensor is stored as ``<param_key>.<name>`` and the file's metadata lists the
param keys (:data:`PARAM_KEYS_METADATA`); a file without that entry (from chaiNNer, traiNNer-redux, an export) is
one plain state dict.
"""
import os
import os.path as osp
from typing import Any, Callable, Dict, Mapping, Optional

import torch

CHECKPOINT_FORMATS = ('pth', 'safetensors')  # logger.save_checkpoint_format
PARAM_KEYS_METADATA = 'basicsr_param_keys'  # comma-separated param keys of a training checkpoint


def _atomic_write(write: Callable[[str], None], path: str) -> None:
    """``write(tmp)`` to a temporary file next to ``path``, then rename: a reader (or a resume after a kill) sees
    the old file or the complete new one, never a truncated one."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    _atomic_write(lambda tmp: torch.save(obj, tmp), path)


def flatten_param_keys(save_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """``{param_key: state_dict}`` -> ``{'<param_key>.<name>': tensor}``: contiguous CPU copies, since
    safetensors refuses tensors that share memory (tied weights, a CPU parameter and its state-dict view)."""
    return {f'{key}.{name}': value.detach().cpu().contiguous().clone()
            for key, state in save_dict.items() for name, value in state.items()}


def nest_param_keys(flat: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]]) -> Dict[str, Any]:
    """The inverse of :func:`flatten_param_keys` for a file whose metadata lists its param keys; a plain state
    dict is returned as it is."""
    keys = (metadata or {}).get(PARAM_KEYS_METADATA)
    if not keys:
        return dict(flat)
    nested: Dict[str, Any] = {key: {} for key in keys.split(',')}
    for name, value in flat.items():
        key, _, rest = name.partition('.')
        nested[key][rest] = value
    return nested


def atomic_safetensors_save(save_dict: Mapping[str, Mapping[str, torch.Tensor]], path: str) -> None:
    """A BasicSR network checkpoint (``{param_key: state_dict}``) as one ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    metadata = {'format': 'pt', PARAM_KEYS_METADATA: ','.join(save_dict)}
    flat = flatten_param_keys(save_dict)
    _atomic_write(lambda tmp: save_file(flat, tmp, metadata=metadata), path)
