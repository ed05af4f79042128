"""What the compiled CUDA kernels of ``mamba_ssm`` and ``causal_conv1d`` accept, so the dispatch sends them only
inputs they are known to take and gives everything else to the next path with the reason.

Every limit below is read from upstream's sources (the claimed ranges: mamba-ssm 1.1.1 to 2.3.2, causal-conv1d
1.1.0 to 1.6.2):

- ``csrc/selective_scan/selective_scan.cpp`` (``selective_scan_fwd``/``bwd``): u in fp32, fp16 or bf16; A in
  fp32 (or complex64); delta, z and time-varying B/C in u's dtype; D and delta_bias fp32; ``dstate <= 256``.
  ``selective_scan.h`` holds strides as ``uint32_t`` up to 2.3.1 (``uint64_t`` from 2.3.2), and the kernel
  computes ``batch_id * u_batch_stride`` in that type: no element offset may reach 2**32 there.
- ``csrc/causal_conv1d.cpp`` (``causal_conv1d_fwd``/``bwd``): x and weight in fp32, fp16 or bf16, bias in the
  weight's dtype, ``2 <= width <= 4``. x with ``stride(1) == 1`` and ``stride(2) > 1`` goes to the channel-last
  kernel, which needs ``dim % 8 == 0`` (every version) and ``stride(0) % 8 == 0 and stride(2) % 8 == 0`` (from
  1.2.0), and launches ``grid.y = ceil(l / 64)`` blocks (``causal_conv1d_fwd.cu``), at most 65535 in CUDA.
  ``causal_conv1d.h`` holds strides as ``uint32_t`` in every version.

A kernel install is usable only when the whole Python call chain imports: the compiled module, then the package
the call goes through (``mamba_ssm``'s ``__init__`` imports its models and, up to 2.2.6, ``transformers``;
causal-conv1d 1.5.2+ needs torch 2.4 and Python 3.10). Both are imported once, and the first error is the reason.
"""
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

__all__ = ['KERNEL_DEVICES', 'broken_install', 'import_problem', 'installed', 'kernel_function', 'scan_problem',
           'conv_problem']

# Device types the kernels run on. Tests add 'cpu' (and 'meta') to route the CUDA dispatch to strict stand-ins.
KERNEL_DEVICES = ['cuda']
FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
UINT32_LIMIT = 2**32
GRID_Y_LIMIT = 65535  # CUDA's cap on grid.y: the channel-last conv's blocks of steps, the Triton scan's channels
CONV_CHANNEL_LAST_BLOCK_L = 64  # kChunkSizeL of the channel-last forward: one grid.y block per 64 steps
MAX_D_STATE = 256
CONV_WIDTHS = (2, 3, 4)
MAMBA_64BIT_OFFSETS = (2, 3, 2)  # the first mamba-ssm release whose scan strides are uint64_t

# op -> (compiled module, Python module of the call, function in it)
CALL_CHAINS = {
    'selective_scan': ('selective_scan_cuda', 'mamba_ssm.ops.selective_scan_interface', 'selective_scan_fn'),
    'causal_conv1d': ('causal_conv1d_cuda', 'causal_conv1d', 'causal_conv1d_fn'),
}

_imported: Dict[str, Tuple[Optional[Callable], Optional[str]]] = {}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f'{type(err).__name__}: {text.splitlines()[0]}' if text else type(err).__name__


def _import_chain(op: str) -> Tuple[Optional[Callable], Optional[str]]:
    if op not in _imported:
        compiled, module_name, function = CALL_CHAINS[op]
        try:
            importlib.import_module(compiled)
        except Exception as err:  # ImportError, but broken builds raise OSError etc. (undefined symbols)
            _imported[op] = None, f'{compiled} is not importable ({_first_line(err)})'
            return _imported[op]
        try:
            _imported[op] = getattr(importlib.import_module(module_name), function), None
        except Exception as err:
            _imported[op] = None, (f'{compiled} imports but {module_name} does not ({_first_line(err)}); '
                                   f'fix that install or uninstall it')
    return _imported[op]


def import_problem(op: str) -> Optional[str]:
    """None when the compiled kernel and the Python call chain of ``op`` import (checked once), else why not."""
    return _import_chain(op)[1]


def installed(name: str) -> bool:
    """Whether module ``name`` is installed, imported or not (None in ``sys.modules``: blocked, as not installed)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def broken_install(op: str) -> Optional[str]:
    """Why ``op``'s kernel does not import although its compiled module is installed, else None (it imports, or
    it is simply not installed): someone installed it to use it, so this deserves a warning, not an info line."""
    problem = import_problem(op)
    return problem if problem and installed(CALL_CHAINS[op][0]) else None


def kernel_function(op: str) -> Callable:
    """Upstream's ``selective_scan_fn`` / ``causal_conv1d_fn``, once :func:`import_problem` said None."""
    function, problem = _import_chain(op)
    if function is None:
        raise RuntimeError(problem)
    return function


def _max_offset(t: torch.Tensor) -> int:
    """The largest element offset the tensor's strides reach."""
    return sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: how the one-line reasons name a dtype."""
    return str(dtype).replace('torch.', '')


def _dtype(t: torch.Tensor) -> str:
    return dtype_name(t.dtype)


def _mamba_has_64bit_offsets() -> bool:
    try:
        version = importlib.metadata.version('mamba_ssm')
    except importlib.metadata.PackageNotFoundError:
        return False
    parts = tuple(int(n) for n in re.findall(r'\d+', version.split('+')[0])[:3])
    return parts >= MAMBA_64BIT_OFFSETS


def scan_problem(t: Mapping[str, Any]) -> Optional[str]:
    """Why ``selective_scan_cuda`` would refuse (or mis-index) these inputs, or None."""
    u, A = t['u'], t['A']
    if u.dtype not in FLOAT_TYPES:
        return f'u is {_dtype(u)}; the kernel takes float32, float16 and bfloat16'
    if A.dtype not in (torch.float32, torch.complex64):
        return f'A is {_dtype(A)}; the kernel takes float32 (or complex64) A'
    expected = {'delta': u.dtype, 'z': u.dtype, 'D': torch.float32, 'delta_bias': torch.float32}
    for name in ('B', 'C'):
        expected[name] = u.dtype if t[name].dim() >= 3 else A.dtype
    for name, dtype in expected.items():
        x = t.get(name)
        if x is not None and x.dtype != dtype:
            return f'{name} is {_dtype(x)} where the kernel needs {dtype_name(dtype)}'
    if A.shape[-1] > MAX_D_STATE:
        return f'd_state {A.shape[-1]} > {MAX_D_STATE}, the kernel\'s limit'
    if not _mamba_has_64bit_offsets():
        b, d, l = u.shape
        # the wrapper makes a tensor whose last stride is not 1 contiguous; out and the gradients are (b, d, l)
        reach = max([b * d * l] + [_max_offset(x) if x.stride(-1) == 1 else x.numel()
                                   for x in (t.get(n) for n in ('u', 'delta', 'z', 'B', 'C')) if x is not None])
        if reach >= UINT32_LIMIT:
            return (f'{reach} elements are past the 2**32 that mamba-ssm < 2.3.2 indexes in uint32 '
                    '(pip install -U mamba-ssm)')
    return None


def conv_problem(t: Mapping[str, Any]) -> Optional[str]:
    """Why ``causal_conv1d_cuda`` would refuse (or mis-index) these inputs, or None."""
    x, weight, bias = t['x'], t['weight'], t.get('bias')
    if x.dtype not in FLOAT_TYPES or weight.dtype not in FLOAT_TYPES:
        return f'x is {_dtype(x)} and weight {_dtype(weight)}; the kernel takes float32, float16 and bfloat16'
    if bias is not None and bias.dtype != weight.dtype:
        return f'bias is {_dtype(bias)} and weight {_dtype(weight)}; the kernel needs them equal'
    b, d, l = x.shape
    width = weight.shape[-1]
    if width not in CONV_WIDTHS:
        return f'width (d_conv) {width}; the kernel takes 2 to 4'
    if not (x.stride(2) == 1 or x.stride(1) == 1):
        x = x.contiguous()  # what the wrapper does
    if x.stride(1) == 1 and x.stride(2) > 1:  # channel-last kernel
        if d % 8 or x.stride(0) % 8 or x.stride(2) % 8:
            return (f'x is channel-last with {d} channels and strides {tuple(x.stride())}; that kernel needs '
                    'channels and strides 0 and 2 divisible by 8')
        if -(-l // CONV_CHANNEL_LAST_BLOCK_L) > GRID_Y_LIMIT:
            return (f'x is channel-last with {l} steps; that kernel launches one block per '
                    f'{CONV_CHANNEL_LAST_BLOCK_L} steps, at most {GRID_Y_LIMIT}')
    reach = max(b * d * l, _max_offset(x))
    if reach >= UINT32_LIMIT:
        return f'{reach} elements are past the 2**32 that causal-conv1d indexes in uint32'
    return None
