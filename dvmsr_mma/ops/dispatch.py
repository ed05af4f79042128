"""Choice between the optional CUDA kernels, the Triton scan, the optional numba CPU scan and the PyTorch path,
made per call.

CUDA tensors take the compiled ``mamba_ssm`` / ``causal_conv1d`` kernel when it imports, else the Triton version
of the op (the selective scan) when ``triton`` imports, else PyTorch; CPU tensors take the numba scan when numba
imports, else PyTorch. The kernels are optional: ``mamba_ssm`` can import without its compiled
``selective_scan_cuda`` extension, so the probe imports the compiled modules themselves, once, and caches the
answer. ``DVMSR_MMA_OPS=kernel|triton|numba|torch`` forces a path (``auto``, the default, picks the fastest
available); forcing one that cannot run is one :class:`~dvmsr_mma.errors.OptionError` line, and an op without a
version for the forced path (the conv has no Triton or numba one) runs PyTorch. CPU tensors never take Triton,
except when ``DVMSR_MMA_OPS=triton`` asks for it under ``TRITON_INTERPRET=1`` (Triton's interpreter: for tests).
"""
import contextlib
import importlib
import logging
import os

from dvmsr_mma.errors import OptionError

logger = logging.getLogger(__name__)

ENV_FORCE_TORCH = 'DVMSR_MMA_FORCE_TORCH_OPS'
ENV_OPS = 'DVMSR_MMA_OPS'
PATHS = ('kernel', 'triton', 'numba', 'torch')
CPU_COMPILED = {'selective_scan': 'dvmsr_mma.ops.scan_cpu'}  # op -> its numba module (importing it imports numba)
TRITON = {'selective_scan': 'dvmsr_mma.ops.scan_triton'}  # op -> its Triton module (importing it imports triton)

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


def requested_path() -> str:
    """'auto' or the path ``DVMSR_MMA_OPS`` (or the torch switch / ``DVMSR_MMA_FORCE_TORCH_OPS``) asks for."""
    if torch_ops_forced():
        return 'torch'
    value = os.environ.get(ENV_OPS, '').strip().lower() or 'auto'
    if value != 'auto' and value not in PATHS:
        raise OptionError(f'{ENV_OPS}={value}: not a path; use auto, {", ".join(PATHS)}')
    return value


def _triton_problem(module_name, on_cuda):
    """Why the Triton module cannot run these tensors, or None."""
    module = probe_kernel(module_name)
    if module is None:
        return 'triton is not importable (it comes with PyTorch\'s Linux CUDA wheels; else pip install triton)'
    if not on_cuda and not module.INTERPRETED:
        return ('the tensors are not on CUDA; Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1, '
                'set before torch is imported)')
    return None


def select(op_name, module_name, *tensors):
    """The path ``op_name`` takes for these tensors: 'kernel' (CUDA, from ``module_name``), 'triton' (for the ops
    in :data:`TRITON`), 'numba' (CPU, for the ops in :data:`CPU_COMPILED`) or 'torch'; logs the choice once per op
    and path."""
    requested = requested_path()
    on_cuda = all(t is None or t.is_cuda for t in tensors)
    on_cpu = not on_cuda and all(t is None or t.device.type == 'cpu' for t in tensors)
    cpu_module = CPU_COMPILED.get(op_name)
    triton_module = TRITON.get(op_name)
    if requested == 'kernel' and not (on_cuda and probe_kernel(module_name) is not None):
        why = 'the tensors are not on CUDA' if not on_cuda else f'{module_name} is not importable'
        raise OptionError(f'{ENV_OPS}=kernel: {op_name} cannot use the CUDA kernel ({why}); unset {ENV_OPS}')
    if requested == 'triton' and triton_module:
        why = _triton_problem(triton_module, on_cuda) if on_cuda or on_cpu else 'the tensors are on mixed devices'
        if why:
            raise OptionError(f'{ENV_OPS}=triton: {op_name} cannot use Triton: {why}; unset {ENV_OPS}')
    if requested == 'numba' and cpu_module and on_cpu and probe_kernel(cpu_module) is None:
        raise OptionError(f'{ENV_OPS}=numba: numba is not importable; pip install numba, or unset {ENV_OPS}')
    if requested == 'torch':
        path, text = 'torch', 'PyTorch (forced)'
    elif requested == 'triton' and triton_module:
        path, text = 'triton', 'Triton (forced)' + ('' if on_cuda else ', in Triton\'s interpreter')
    elif on_cuda and requested in ('auto', 'kernel') and probe_kernel(module_name) is not None:
        path, text = 'kernel', f'CUDA kernel ({module_name})'
    elif on_cuda and requested == 'auto' and triton_module and _triton_problem(triton_module, True) is None \
            and not probe_kernel(triton_module).INTERPRETED:
        path, text = 'triton', f'Triton ({module_name} not importable)'
    elif on_cpu and requested in ('auto', 'numba') and cpu_module and probe_kernel(cpu_module) is not None:
        path, text = 'numba', 'numba-compiled CPU (tensors not on CUDA; without numba, the PyTorch)'
    elif not on_cuda:
        path, text = 'torch', 'PyTorch (tensors not on CUDA)'
    elif requested != 'auto':
        path, text = 'torch', f'PyTorch (no {requested} version of this op)'
    else:
        path, text = 'torch', f'PyTorch ({module_name} not importable' + (', nor triton)' if triton_module else ')')
    key = (op_name, text)
    if key not in _logged:
        _logged.add(key)
        logger.info('%s: using the %s path.', op_name, text)
    return path


def use_kernel(op_name, module_name, *tensors):
    """Whether ``op_name`` should run the CUDA kernel from ``module_name`` for these tensors; logs once."""
    return select(op_name, module_name, *tensors) == 'kernel'
