"""Choice between the optional CUDA kernels and the PyTorch path, made per call.

The kernels are optional: ``mamba_ssm`` can import without its compiled ``selective_scan_cuda``
extension, so the probe imports the compiled modules themselves, once, and caches the answer.
"""
import contextlib
import importlib
import logging
import os

logger = logging.getLogger(__name__)

ENV_FORCE_TORCH = 'DVMSR_MMA_FORCE_TORCH_OPS'

_force_torch = False
_probe_cache = {}
_logged = set()


class _ForceTorchOps(contextlib.ContextDecorator):
    """Returned by :func:`force_torch_ops`; the switch is already set, ``with`` restores it on exit."""

    def __init__(self, previous):
        self._previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _force_torch
        _force_torch = self._previous
        return False


def force_torch_ops(enabled=True):
    """Force (or stop forcing) the PyTorch path for every op.

    Works as a plain call (``force_torch_ops(True)``) or as a context manager
    (``with force_torch_ops(): ...``), which restores the previous setting on exit.
    """
    global _force_torch
    previous = _force_torch
    _force_torch = bool(enabled)
    return _ForceTorchOps(previous)


def torch_ops_forced():
    """True when the switch or ``DVMSR_MMA_FORCE_TORCH_OPS`` (any value but '', '0', 'false', 'no') forces PyTorch."""
    env = os.environ.get(ENV_FORCE_TORCH, '').strip().lower()
    return _force_torch or env not in ('', '0', 'false', 'no', 'off')


def probe_kernel(module_name):
    """Import ``module_name`` (a compiled extension) once; return the module or None."""
    if module_name not in _probe_cache:
        try:
            _probe_cache[module_name] = importlib.import_module(module_name)
        except Exception:  # ImportError, but also broken builds (undefined symbols raise OSError etc.)
            _probe_cache[module_name] = None
    return _probe_cache[module_name]


def use_kernel(op_name, module_name, *tensors):
    """Whether ``op_name`` should run the CUDA kernel from ``module_name`` for these tensors; logs once."""
    if torch_ops_forced():
        path = 'PyTorch (forced)'
        use = False
    elif not all(t is None or t.is_cuda for t in tensors):
        path = 'PyTorch (tensors not on CUDA)'
        use = False
    elif probe_kernel(module_name) is None:
        path = f'PyTorch ({module_name} not importable)'
        use = False
    else:
        path = f'CUDA kernel ({module_name})'
        use = True
    key = (op_name, path)
    if key not in _logged:
        _logged.add(key)
        logger.info('%s: using the %s path.', op_name, path)
    return use
