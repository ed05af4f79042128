"""Which implementation of an op runs a call: one table of paths per op, tried in order.

Each :class:`Path` names the device types it serves and has a ``why_not(tensors, forced)`` that returns None or
the reason it cannot take these tensors (not importable, a kernel limit, a dtype). ``auto`` (the default) takes
the first path of the op's row that serves the tensors' device and has no reason against it; every path it
passed over for a reason is named in the one INFO line logged per op, path and reasons. A forced path that
cannot run is one :class:`~dvmsr_mma.utils.errors.OptionError` line with its reason; forcing a path an op does not
have (the conv has no Triton or graph version) runs that op's PyTorch path.

The entry points are here too (:func:`selective_scan`, :func:`causal_conv1d` and their token-major forms): each asks
:func:`select` and calls the chosen implementation, a module that imports nothing from this one.

Forcing, innermost first: :func:`ops_path` (a context manager, e.g. ``ops_path('graph')`` for ONNX export, or
``ops_path('auto')``, which lifts the forcing outside it),
:func:`force_torch_ops`, ``DVMSR_MMA_FORCE_TORCH_OPS=1``, ``DVMSR_MMA_OPS=kernel|triton|numba|torch``.

The order for CUDA tensors is the compiled kernel (:mod:`.cuda_kernels` says what it accepts), then Triton, then
PyTorch; for CPU tensors numba, then PyTorch. CPU tensors take Triton only when it is forced under
``TRITON_INTERPRET=1`` (Triton's interpreter: for tests). This module decides; the implementations import
nothing from it.
"""
import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from dvmsr_mma.utils.errors import OptionError

from . import conv_torch, cuda_kernels, scan_torch
from .scan_inputs import checked_token_shapes

logger = logging.getLogger(__name__)

ENV_FORCE_TORCH = 'DVMSR_MMA_FORCE_TORCH_OPS'
ENV_OPS = 'DVMSR_MMA_OPS'
PATHS = ('kernel', 'triton', 'numba', 'torch')  # what DVMSR_MMA_OPS may name
NUMBA_MODULE = 'dvmsr_mma.ops.numba_runtime'  # importing it imports numba
TRITON_MODULE = 'dvmsr_mma.ops.scan_triton'  # importing it imports triton

Tensors = Mapping[str, Any]

_forced: List[str] = []  # ops_path() stack
_force_torch = False
_probe_cache: Dict[str, Any] = {}
_logged = set()


@dataclass(frozen=True)
class Path:
    """One implementation of an op: ``why_not(tensors, forced)`` -> the reason it cannot run them, or None;
    ``devices()`` the device types ``auto`` offers it (None: any); ``auto`` False: only when forced."""
    name: str
    label: str
    why_not: Callable[[Tensors, bool], Optional[str]]
    devices: Optional[Callable[[], Tuple[str, ...]]] = None
    auto: bool = True
    broken: Optional[Callable[[], Optional[str]]] = None  # why an installed path does not import (a WARNING)


def probe(module_name: str) -> Any:
    """Import ``module_name`` once; the module, or None when it does not import (the error is kept)."""
    if module_name not in _probe_cache:
        try:
            _probe_cache[module_name] = importlib.import_module(module_name)
        except Exception as err:  # ImportError, but also broken builds (undefined symbols raise OSError etc.)
            _probe_cache[module_name] = err
    found = _probe_cache[module_name]
    return None if found is None or isinstance(found, Exception) else found


def _numba_broken() -> Optional[str]:
    """Why numba does not import although it is installed (e.g. a numpy newer than it supports), else None; found
    once (a call without numba must not look on disk for it)."""
    key = f'{NUMBA_MODULE}:broken'
    if key not in _probe_cache:
        probe(NUMBA_MODULE)
        err, reason = _probe_cache[NUMBA_MODULE], None
        if isinstance(err, Exception) and cuda_kernels.installed('numba'):
            text = str(err).strip()
            reason = f'numba is installed but does not import ({type(err).__name__}' + (
                f': {text.splitlines()[0]})' if text else ')')
        _probe_cache[key] = reason
    return _probe_cache[key]


def _device(tensors: Tensors) -> str:
    """The one device type of the call's tensors, or 'mixed'."""
    kinds = {t.device.type for t in tensors.values() if t is not None}
    return kinds.pop() if len(kinds) == 1 else 'mixed'


def _empty(tensors: Tensors) -> Optional[str]:
    """A tensor with no elements (a batch of 0 images): the CUDA and Triton kernels would launch an empty grid,
    which CUDA refuses ("invalid configuration argument"); the PyTorch path returns the empty result."""
    name, x = next(((name, x) for name, x in tensors.items() if x is not None and x.numel() == 0), (None, None))
    return None if x is None else f'{name} {tuple(x.shape)} has no elements, and the kernel would launch an empty grid'


def _kernel_why_not(op: str, problem: Callable[[Tensors], Optional[str]]) -> Callable[[Tensors, bool], Optional[str]]:
    def why_not(tensors: Tensors, forced: bool) -> Optional[str]:
        if _device(tensors) not in cuda_kernels.KERNEL_DEVICES:
            return 'the tensors are not on CUDA'
        return cuda_kernels.import_problem(op) or _empty(tensors) or problem(tensors)
    return why_not


def _triton_why_not(tensors: Tensors, forced: bool) -> Optional[str]:
    module = probe(TRITON_MODULE)
    if module is None:
        return 'triton is not importable (it comes with PyTorch\'s Linux CUDA wheels; else pip install triton)'
    device = _device(tensors)
    if device != 'cuda' and not (device == 'cpu' and module.INTERPRETED):
        return ('the tensors are not on CUDA; Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1, '
                'set before torch is imported)')
    if device == 'cuda' and module.INTERPRETED and not forced:
        return 'TRITON_INTERPRET=1 is set, and the interpreter is for tests'
    problem = module.version_problem() or _empty(tensors)
    if problem:
        return problem
    u, A = tensors['u'], tensors['A']
    if u.dtype not in cuda_kernels.FLOAT_TYPES:
        return f'u is {cuda_kernels.dtype_name(u.dtype)}; the Triton scan takes float32, float16 and bfloat16'
    if A.is_complex():
        return 'A is complex; the Triton scan takes real A'
    if u.shape[1] > cuda_kernels.GRID_Y_LIMIT:  # the scan launches (b, d) programs
        return (f'{u.shape[1]} channels; the Triton scan launches one program per channel, at most '
                f'{cuda_kernels.GRID_Y_LIMIT}')
    return None


def _numba_why_not(tensors: Tensors, forced: bool) -> Optional[str]:
    if _device(tensors) != 'cpu':
        return 'the tensors are not on the CPU'
    if probe(NUMBA_MODULE) is not None:
        return None
    return _numba_broken() or 'numba is not importable (pip install numba)'


def _kernel_devices() -> Tuple[str, ...]:
    return tuple(cuda_kernels.KERNEL_DEVICES)


def _always(tensors: Tensors, forced: bool) -> Optional[str]:
    """The PyTorch and graph paths take every call."""
    return None


TORCH = Path('torch', 'PyTorch', _always)
TABLE: Dict[str, Tuple[Path, ...]] = {
    'selective_scan': (
        Path('kernel', 'CUDA kernel (mamba_ssm)', _kernel_why_not('selective_scan', cuda_kernels.scan_problem),
             _kernel_devices, broken=lambda: cuda_kernels.broken_install('selective_scan')),
        Path('triton', 'Triton', _triton_why_not, lambda: ('cuda', )),
        Path('numba', 'numba CPU', _numba_why_not, lambda: ('cpu', ), broken=_numba_broken),
        TORCH,
        Path('graph', 'ONNX-graph', _always, auto=False),
    ),
    'causal_conv1d': (
        Path('kernel', 'CUDA kernel (causal_conv1d)', _kernel_why_not('causal_conv1d', cuda_kernels.conv_problem),
             _kernel_devices, broken=lambda: cuda_kernels.broken_install('causal_conv1d')),
        Path('numba', 'numba CPU', _numba_why_not, lambda: ('cpu', ), broken=_numba_broken),
        TORCH,
    ),
}


class _ForceTorchOps(contextlib.ContextDecorator):
    """Returned by :func:`force_torch_ops`; the switch is already set, ``with`` restores it on exit."""

    def __init__(self, previous: bool):
        self._previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _force_torch
        _force_torch = self._previous
        return False


def force_torch_ops(enabled: bool = True) -> _ForceTorchOps:
    """Force (or stop forcing) the PyTorch path for every op.

    Works as a plain call (``force_torch_ops(True)``) or as a context manager
    (``with force_torch_ops(): ...``), which restores the previous setting on exit.
    """
    global _force_torch
    previous = _force_torch
    _force_torch = bool(enabled)
    return _ForceTorchOps(previous)


@contextlib.contextmanager
def ops_path(name: str) -> Iterator[None]:
    """Run every op on path ``name`` inside the block (``'graph'``: the scan whose traced graph does not depend
    on the sequence length, for ONNX export); an op without that path runs PyTorch. ``'auto'``: the automatic
    choice, whatever forces it outside the block (a checkpoint's recompute repeats its forward's choice)."""
    if name != 'auto' and not any(p.name == name for row in TABLE.values() for p in row):
        raise ValueError(f'ops_path: unknown path {name!r}')
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def torch_ops_forced() -> bool:
    """True when the switch or ``DVMSR_MMA_FORCE_TORCH_OPS`` (any value but '', '0', 'false', 'no') forces PyTorch."""
    env = os.environ.get(ENV_FORCE_TORCH, '').strip().lower()
    return _force_torch or env not in ('', '0', 'false', 'no', 'off')


def requested_path() -> Tuple[str, str]:
    """('auto', '') or the forced path and what forced it."""
    if _forced:
        return _forced[-1], '' if _forced[-1] == 'auto' else 'ops_path()'
    if torch_ops_forced():
        return 'torch', 'force_torch_ops' if _force_torch else ENV_FORCE_TORCH
    value = os.environ.get(ENV_OPS, '').strip().lower() or 'auto'
    if value != 'auto' and value not in PATHS:
        raise OptionError(f'{ENV_OPS}={value}: not a path; use auto, {", ".join(PATHS)}')
    return value, f'{ENV_OPS}={value}'


def _log_once(op: str, path: Path, note: str) -> None:
    key = (op, path.name, note)
    if key not in _logged:
        _logged.add(key)
        logger.info('%s: using the %s path%s.', op, path.label, f' ({note})' if note else '')


def _warn_broken_once(op: str, path: Path) -> None:
    """A path passed over because its install is broken: one WARNING per op and path (default logging shows it;
    a path simply not installed stays in the INFO line). Asked once per op and path."""
    key = (op, path.name, 'broken')
    if path.broken is None or key in _logged:
        return
    _logged.add(key)
    reason = path.broken()
    if reason:
        logger.warning('%s: the %s path is installed but not used: %s', op, path.label, reason)


def select(op: str, tensors: Tensors) -> str:
    """The name of the path ``op`` takes for ``tensors`` (its arguments by name); logs the choice once."""
    row = TABLE[op]
    requested, by = requested_path()
    if requested != 'auto':
        path = next((p for p in row if p.name == requested), TORCH)
        if path.name == requested:
            why = path.why_not(tensors, True)
            if why:
                hint = f'unset {ENV_OPS}' if by.startswith(ENV_OPS) else 'use another path'
                raise OptionError(f'{by}: {op} cannot use the {path.label} path: {why}; {hint}')
        _log_once(op, path, f'forced by {by}' + ('' if path.name == requested else f', which {op} does not have'))
        return path.name
    device = _device(tensors)
    passed = []
    for path in row:
        if not path.auto or (path.devices is not None and device not in path.devices()):
            continue
        why = path.why_not(tensors, False)
        if why is None:
            _log_once(op, path, '; '.join(passed))
            return path.name
        _warn_broken_once(op, path)
        passed.append(f'not the {path.label}: {why}')
    raise AssertionError(f'{op}: no path for {device} tensors')  # the PyTorch path serves every device


def token_major(x: Any) -> bool:
    """Whether the scan for tensors like ``x`` takes the numba CPU path, whose kernels read the mixer's (b, l, d)
    tensors in place: then the mixer keeps that layout (see :mod:`.scan_cpu`). Where an earlier path serves
    ``x``'s device (the CUDA kernel, Triton), the mixer builds the (b, d, l) layout they take, whether or not they
    accept the exact tensors, as does every path after numba."""
    requested, _ = requested_path()
    if requested != 'auto':
        return requested == 'numba'
    device = _device({'u': x})
    for path in TABLE['selective_scan']:
        if path.auto and (path.devices is None or device in path.devices()):
            return path.name == 'numba' and path.why_not({'u': x}, False) is None
    return False


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Selective scan with ``mamba_ssm``'s ``selective_scan_fn`` signature. u, delta, z: (b, d, l); A: (d, n);
    B, C: (b, n, l), (b, g, n, l) or time-invariant (d, n); D, delta_bias: (d,).

    Returns (b, d, l) in u's dtype. CUDA tensors run ``selective_scan_cuda`` (through ``mamba_ssm``) when it
    imports and accepts them (:mod:`.cuda_kernels`), else the Triton scan (:mod:`.scan_triton`); CPU tensors the
    numba scan (:mod:`.scan_cpu`) when numba imports; the exact PyTorch path (:mod:`.scan_torch`) otherwise or
    when forced.
    ``return_last_state`` (for step-by-step decoding) is not supported.
    """
    if return_last_state:
        raise NotImplementedError('selective_scan: return_last_state is not supported (a streaming feature of '
                                  'mamba_ssm that super-resolution does not use)')
    path = select('selective_scan', dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    if path == 'kernel':
        selective_scan_fn = cuda_kernels.kernel_function('selective_scan')
        return selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if path == 'triton':
        from .scan_triton import selective_scan_triton
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if path == 'numba':
        from .scan_lanes import selective_scan_cpu
        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if path == 'graph':
        from .scan_graph import selective_scan_graph
        return selective_scan_graph(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return scan_torch.selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan_tokens(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """:func:`selective_scan` on token-major tensors, as the Mamba mixer holds them: u, delta, z (b, l, d); B, C
    (b, l, n) or (b, l, g, n); A (d, n); D, delta_bias (d,). ``reverse``: the scan of the flipped sequence, flipped
    back. Returns (b, l, d).

    The numba path reads the tensors where they are, at any batch and time strides (see :mod:`.scan_cpu`); every
    other path runs :func:`selective_scan` on (b, d, l) views of them (flipped copies for ``reverse``).
    """
    checked_token_shapes(u, delta, A, B, C, D, z, delta_bias)
    if select('selective_scan', dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)) == 'numba':
        from .scan_cpu import selective_scan_tokens_cpu
        return selective_scan_tokens_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)

    def channels_first(x):  # (b, l, ...) -> (b, ..., l), in scan order
        x = x.flip(1) if reverse else x
        return x.permute(0, *range(2, x.dim()), 1)

    y = selective_scan(channels_first(u), channels_first(delta), A, channels_first(B), channels_first(C), D,
                       None if z is None else channels_first(z), delta_bias, delta_softplus).transpose(1, 2)
    return y.flip(1) if reverse else y


def _check_conv(op: str, x: torch.Tensor, weight: torch.Tensor, activation: Optional[str], channels: int) -> None:
    """One line for an activation the conv does not have or shapes that do not fit; ``channels``: x's channel dim."""
    if activation not in conv_torch.ACTIVATIONS:
        raise NotImplementedError('activation must be None, "silu" or "swish"')
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[channels]:
        layout = '(b, d, l)' if channels == 1 else '(b, l, d)'
        raise ValueError(f'{op}: x must be {layout} and weight (d, w), got x {tuple(x.shape)} and weight '
                         f'{tuple(weight.shape)}')


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, seq_idx=None,
                  initial_states=None, return_final_states: bool = False, final_states_out=None,
                  activation: Optional[str] = None) -> torch.Tensor:
    """Causal depthwise conv1d with the signature of ``causal_conv1d.causal_conv1d_fn``. x: (b, d, l), weight: (d, w),
    bias: (d,), activation: None, 'silu' or 'swish'.

    The signature is upstream's (causal-conv1d 1.2 to 1.6): ``seq_idx``, ``initial_states``, ``return_final_states``
    and ``final_states_out`` sit between ``bias`` and ``activation``, so positional callers of upstream work here
    too, and the kernel is called with every option by keyword. Those four are streaming / packed-sequence features
    that super-resolution does not use; they are refused with one line rather than half supported.

    Runs ``causal_conv1d_cuda`` for CUDA tensors it accepts (see :mod:`.cuda_kernels`), the numba kernel for CPU
    tensors (on a (b, l, d) copy: see :func:`causal_conv1d_tokens`), else PyTorch.
    """
    streaming = {'seq_idx': seq_idx, 'initial_states': initial_states, 'final_states_out': final_states_out,
                 'return_final_states': return_final_states or None}
    for name, value in streaming.items():
        if value is not None:
            raise NotImplementedError(f'causal_conv1d: {name} is not supported (a streaming / packed-sequence '
                                      'feature of causal-conv1d that super-resolution does not use)')
    _check_conv('causal_conv1d', x, weight, activation, channels=1)
    path = select('causal_conv1d', dict(x=x, weight=weight, bias=bias))
    if path == 'kernel':
        return cuda_kernels.kernel_function('causal_conv1d')(x, weight, bias=bias, activation=activation)
    if path == 'numba':
        from .conv_cpu import causal_conv1d_tokens_cpu
        return causal_conv1d_tokens_cpu(x.transpose(1, 2), weight, bias, activation).transpose(1, 2).contiguous()
    return conv_torch.causal_conv1d_torch(x, weight, bias, activation)


def causal_conv1d_tokens(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         activation: Optional[str] = None, reverse: bool = False) -> torch.Tensor:
    """:func:`causal_conv1d` on token-major x (b, l, d), as the Mamba mixer holds it; ``reverse``: the conv of the
    flipped sequence, flipped back. Returns (b, l, d). The numba path reads x where it is (see :mod:`.conv_cpu`);
    every other path runs :func:`causal_conv1d` on a (b, d, l) view (a flipped copy for ``reverse``)."""
    _check_conv('causal_conv1d_tokens', x, weight, activation, channels=2)
    if select('causal_conv1d', dict(x=x, weight=weight, bias=bias)) == 'numba':
        from .conv_cpu import causal_conv1d_tokens_cpu
        return causal_conv1d_tokens_cpu(x, weight, bias, activation, reverse)
    x = x.flip(1) if reverse else x
    y = causal_conv1d(x.transpose(1, 2), weight, bias, activation=activation).transpose(1, 2)
    return y.flip(1) if reverse else y
