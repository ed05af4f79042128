"""Strict stand-ins for the compiled ``selective_scan_cuda`` and ``causal_conv1d_cuda`` modules, and upstream's
real Python wrappers (mamba-ssm, causal-conv1d) loaded over them, so the CUDA kernel path runs on CPU tensors.

Each stand-in enforces every ``TORCH_CHECK`` of upstream's C++ that a CPU tensor can meet (``is_cuda`` aside),
plus the layout and index assumptions its kernels make without checking, and computes in float64 from the
recurrence (``reference_scan``, the same as the tests' reference). The checks cite the upstream file.

The wrappers are the sdists installed without compiling (``MAMBA_SKIP_CUDA_BUILD=TRUE``,
``CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE``) by ``make install`` into ``.venv/upstream/<name>-<version>``; nothing
from them is committed here.
"""
import functools
import importlib
import os
import sys
import types
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from test_ops_scan import reference_scan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_DIR = os.environ.get('DVMSR_MMA_UPSTREAM_DIR', os.path.join(ROOT, '.venv', 'upstream'))
# (mamba-ssm, causal-conv1d): the oldest and the newest release of each range setup.py's [cuda] extra claims
UPSTREAM_PAIRS = (('1.1.1', '1.1.0'), ('2.3.2.post1', '1.6.2.post1'))
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
UINT32 = 2**32


def check(condition: bool, message: str) -> None:
    """TORCH_CHECK: a RuntimeError with upstream's message."""
    if not condition:
        raise RuntimeError(message)


def _max_offset(t: torch.Tensor) -> int:
    return sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)


def _check_uint32(names_tensors, what: str) -> None:
    """Offsets computed as ``batch_id * batch_stride + ...`` in uint32 (``index_t`` of the kernel's header)."""
    for name, t in names_tensors:
        if t is not None:
            check(_max_offset(t) < UINT32, f'{what}: {name} reaches element {_max_offset(t)}, past uint32 indexing '
                                           '(wrong results or an illegal memory access on a GPU)')


# --------------------------------------------------------------------------------------- selective_scan_cuda
class ScanCuda(types.ModuleType):
    """``selective_scan_cuda``: ``fwd`` / ``bwd`` of mamba-ssm's ``csrc/selective_scan/selective_scan.cpp``.
    ``uint64_offsets``: ``index_t`` is ``uint64_t`` in ``selective_scan.h`` from 2.3.2, ``uint32_t`` before."""

    def __init__(self, uint64_offsets: bool):
        super().__init__('selective_scan_cuda')
        self.uint64_offsets = uint64_offsets
        self.calls = []

    def _checks(self, u, delta, A, B, C, D, z, delta_bias, dout=None):
        # selective_scan.cpp, selective_scan_fwd / selective_scan_bwd: the same checks in both
        check(u.dtype in FLOATS, 'input_type == Float || Half || BFloat16')
        check(A.dtype in (torch.float32, torch.complex64), 'weight_type == Float || ComplexFloat')
        var_b, var_c = B.dim() >= 3, C.dim() >= 3
        check(delta.dtype == u.dtype, 'delta.scalar_type() == input_type')
        for name, x, var in (('B', B, var_b), ('C', C, var_c)):
            check(x.dtype == (u.dtype if var else A.dtype),
                  f'{name}.scalar_type() == (!is_variable_{name} ? weight_type : input_type)')
        check(u.stride(-1) == 1 or u.size(-1) == 1, 'u.stride(-1) == 1 || u.size(-1) == 1')
        check(delta.stride(-1) == 1 or delta.size(-1) == 1, 'delta.stride(-1) == 1 || delta.size(-1) == 1')
        b, d, l = u.shape
        n = A.shape[1]
        # selective_scan_fwd_kernel.cuh: dim3 grid(batch, dim / kNRows); a zero-sized grid fails to launch
        check(b > 0 and d > 0, 'CUDA error: invalid configuration argument (an empty grid: batch or dim is 0)')
        check(n <= 256, 'selective_scan only supports state dimension <= 256')
        check(tuple(delta.shape) == (b, d, l), 'delta must have shape (batch_size, dim, seqlen)')
        check(tuple(A.shape) == (d, n), 'A must have shape (dim, dstate)')
        for name, x, var in (('B', B, var_b), ('C', C, var_c)):
            if var:  # the wrapper has made (b, n, l) into (b, 1, n, l)
                check(x.dim() == 4 and tuple(x.shape) == (b, x.shape[1], n, l),
                      f'{name} must have shape (batch_size, n_groups, dstate, seqlen)')
                check(x.stride(-1) == 1 or x.size(-1) == 1, f'{name}.stride(-1) == 1 || {name}.size(-1) == 1')
            else:
                check(tuple(x.shape) == (d, n), f'{name} must have shape (dim, dstate)')
        for name, x in (('D', D), ('delta_bias', delta_bias)):
            if x is not None:
                check(x.dtype == torch.float32, f'{name}.scalar_type() == at::ScalarType::Float')
                check(x.stride(-1) == 1 or x.size(-1) == 1, f'{name}.stride(-1) == 1 || {name}.size(-1) == 1')
                check(tuple(x.shape) == (d, ), f'{name} must have shape (dim)')
        if z is not None:
            check(z.dtype == u.dtype, 'z.scalar_type() == input_type')
            check(z.stride(-1) == 1 or z.size(-1) == 1, 'z.stride(-1) == 1 || z.size(-1) == 1')
            check(tuple(z.shape) == (b, d, l), 'z must have shape (batch_size, dim, seqlen)')
        if dout is not None:
            check(dout.dtype == u.dtype, 'dout.scalar_type() == input_type')
            check(dout.stride(-1) == 1 or dout.size(-1) == 1, 'dout.stride(-1) == 1 || dout.size(-1) == 1')
        if not self.uint64_offsets:
            what = 'selective_scan (selective_scan.h: index_t uint32_t)'
            _check_uint32([('u', u), ('delta', delta), ('z', z), ('B', B), ('C', C), ('dout', dout)], what)
            check(b * d * l <= UINT32, f'{what}: out has {b * d * l} elements, past uint32 indexing')

    @staticmethod
    def _reference(u, delta, A, B, C, D, z, delta_bias, softplus):
        """(out before the gate, out after it), float64, with autograd."""
        B, C = (x[:, 0] if x.dim() == 4 and x.shape[1] == 1 else x for x in (B, C))
        out = reference_scan(u, delta, A, B, C, D, None, delta_bias, softplus)
        return out, (out * F.silu(z.double()) if z is not None else None)

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        self._checks(u, delta, A, B, C, D, z, delta_bias)
        self.calls.append('fwd')
        with torch.no_grad():
            out, out_z = self._reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        b, d, l = u.shape
        n_chunks = (l + 2047) // 2048
        x = torch.zeros(b, d, n_chunks, 2 * A.shape[1], dtype=A.dtype)  # chunk states: unused by this bwd
        result = [out.to(u.dtype), x]
        if z is not None:
            result.append(out_z.to(u.dtype))
        return result

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
        self._checks(u, delta, A, B, C, D, z, delta_bias, dout)
        b, d, l = u.shape
        n_chunks = (l + 2047) // 2048
        if n_chunks > 1:
            check(x is not None, 'x_.has_value()')
        if x is not None:
            check(x.dtype == A.dtype and x.is_contiguous(), 'x.scalar_type() == weight_type, x.is_contiguous()')
            check(tuple(x.shape) == (b, d, n_chunks, 2 * A.shape[1]), 'x must have shape (b, dim, n_chunks, 2*dstate)')
        if z is not None:
            check(out is not None and out.dtype == u.dtype and out.stride(-1) == 1, 'out_.has_value(), out dtype')
        self.calls.append('bwd')
        inputs = [t.detach().double().requires_grad_(True) if t is not None else None
                  for t in (u, delta, A, B, C, D, z, delta_bias)]
        with torch.enable_grad():
            pre, gated = self._reference(*inputs, delta_softplus)
            active = [t for t in inputs if t is not None]
            grads = dict(zip([id(t) for t in active], torch.autograd.grad(gated if z is not None else pre, active,
                                                                           dout.double())))
        g = [grads[id(t)] if t is not None else None for t in inputs]
        du, ddelta, dA, dB, dC, dD, dz_, ddelta_bias = g
        result = [du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.float().to(B.dtype),
                  dC.float().to(C.dtype), dD.float() if D is not None else None,
                  ddelta_bias.float() if delta_bias is not None else None]
        if z is not None:
            result.append(dz_.to(z.dtype))
        if recompute_out_z:
            result.append(gated.detach().to(u.dtype))
        return result


# ---------------------------------------------------------------------------------------- causal_conv1d_cuda
class ConvCuda(types.ModuleType):
    """``causal_conv1d_cuda``: ``causal_conv1d_fwd`` / ``_bwd`` of causal-conv1d's ``csrc/causal_conv1d.cpp``,
    with the signature of ``api`` ('1.1': returns; '1.2': initial/final states, returns; '1.5': writes ``out`` /
    the gradients it is given)."""

    def __init__(self, api: str):
        super().__init__('causal_conv1d_cuda')
        self.api = api
        self.calls = []

    def _checks(self, x, weight, bias, dout=None):
        # causal_conv1d.cpp, causal_conv1d_fwd / causal_conv1d_bwd
        check(x.dtype in FLOATS, 'input_type == Float || Half || BFloat16')
        check(weight.dtype in FLOATS, 'weight_type == Float || Half || BFloat16')
        b, d, l = x.shape
        width = weight.shape[-1]
        check(tuple(weight.shape) == (d, width), 'weight must have shape (dim, width)')
        # causal_conv1d_fwd.cu: dim3 grid(batch, dim / kNThreads...) or grid(batch, ceil(l / 64), ...)
        check(b > 0 and d > 0 and l > 0, 'CUDA error: invalid configuration argument (an empty grid)')
        check(x.stride(2) == 1 or x.stride(1) == 1, 'x.stride(2) == 1 || x.stride(1) == 1')
        channel_last = x.stride(1) == 1 and x.stride(2) > 1
        if channel_last:
            check(d % 8 == 0, 'causal_conv1d only supports channel dimension divisible by 8 for now')
            if self.api != '1.1':  # from 1.2.0
                check(x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0, 'causal_conv1d with channel last layout '
                      'requires strides (x.stride(0) and x.stride(2)) to be multiples of 8')
            # causal_conv1d_fwd.cu, channel-last launch: grid(batch, ceil(l / kChunkSizeL = 64), ...), grid.y <= 65535
            check((l + 63) // 64 <= 65535, 'CUDA error: invalid configuration argument (grid.y > 65535)')
        check(2 <= width <= 4, 'causal_conv1d only supports width between 2 and 4')
        if bias is not None:
            check(bias.dtype == weight.dtype, 'bias.scalar_type() == weight_type')
            check(bias.stride(-1) == 1, 'bias.stride(-1) == 1')
            check(tuple(bias.shape) == (d, ), 'bias must have shape (dim)')
        if dout is not None:
            check(tuple(dout.shape) == (b, d, l), 'dout must have shape (batch_size, dim, seqlen)')
            if channel_last and self.api != '1.1':
                check(dout.stride(2) % 8 == 0 and dout.stride(0) % 8 == 0, 'causal_conv1d with channel last '
                      'layout requires strides (dout.stride(0) and dout.stride(2)) to be multiples of 8')
        _check_uint32([('x', x), ('dout', dout)], 'causal_conv1d (causal_conv1d.h: index_t uint32_t)')
        return channel_last

    @staticmethod
    def _windows(x, width):
        """(b, d, l, width): the inputs each causal output sees (w - 1 zeros on the left)."""
        return F.pad(x.double(), (width - 1, 0)).unfold(-1, width, 1)

    @classmethod
    def _reference(cls, x, weight, bias, silu):
        """(output, pre-activation), float64."""
        pre = (cls._windows(x, weight.shape[-1]) * weight.double()[None, :, None, :]).sum(-1)
        if bias is not None:
            pre = pre + bias.double()[:, None]
        return (F.silu(pre) if silu else pre), pre

    @classmethod
    def _gradients(cls, x, weight, bias, dout, silu):
        """dx, dweight, dbias, float64, written out: causal-conv1d >= 1.5 calls the kernel inside a
        ``torch.library.custom_op``, below autograd."""
        _, pre = cls._reference(x, weight, bias, silu)
        g = dout.double()
        if silu:
            sig = torch.sigmoid(pre)
            g = g * sig * (1 + pre * (1 - sig))
        width, l = weight.shape[-1], x.shape[-1]
        dweight = (g[..., None] * cls._windows(x, width)).sum((0, 2))
        dwindows = g[..., None] * weight.double()[None, :, None, :]
        dxpad = x.new_zeros(x.shape[0], x.shape[1], l + width - 1, dtype=torch.float64)
        for k in range(width):
            dxpad[..., k:k + l] += dwindows[..., k]
        return dxpad[..., width - 1:], dweight, (g.sum((0, 2)) if bias is not None else None)

    def causal_conv1d_fwd(self, x, weight, bias, seq_idx, *rest):
        silu = rest[-1]
        check(seq_idx is None, 'seq_idx is only supported for channel last layout (not used by the networks)')
        if self.api != '1.1':
            check(rest[0] is None and rest[-2] is None, 'initial/final states (not used by the networks)')
        self._checks(x, weight, bias)
        self.calls.append('fwd')
        out = self._reference(x, weight, bias, silu)[0].to(x.dtype)
        if self.api == '1.5':
            rest[1].copy_(out)  # (x, weight, bias, seq_idx, initial_states, out, final_states_out, silu)
            return None
        return out

    def causal_conv1d_bwd(self, x, weight, bias, dout, seq_idx, *rest):
        silu = rest[-1]
        channel_last = self._checks(x, weight, bias, dout)
        self.calls.append('bwd')
        dx, dweight, dbias = self._gradients(x, weight, bias, dout, silu)
        if self.api == '1.5':  # (..., dfinal_states, dx, dweight, dbias, dinitial_states, silu): written in place
            dx_out, dweight_out, dbias_out = rest[2], rest[3], rest[4]
            check(dx_out.stride(1) == 1 if channel_last else dx_out.stride(2) == 1, 'dx.stride(...) == 1')
            dx_out.copy_(dx)
            dweight_out.copy_(dweight)
            if dbias_out is not None:
                dbias_out.copy_(dbias)
            return None
        result = [dx.to(x.dtype), dweight.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else None]
        return result if self.api == '1.1' else result + [None]


def conv_api(version: str) -> str:
    major, minor = (int(p) for p in version.split('.')[:2])
    return '1.1' if (major, minor) < (1, 2) else '1.2' if (major, minor) < (1, 5) else '1.5'


def upstream_paths(mamba: str, conv: str) -> Tuple[str, str]:
    return (os.path.join(UPSTREAM_DIR, f'mamba-ssm-{mamba}'), os.path.join(UPSTREAM_DIR, f'causal-conv1d-{conv}'))


def _is_upstream(name: str) -> bool:
    return name.split('.')[0] in ('mamba_ssm', 'causal_conv1d', 'selective_scan_cuda', 'causal_conv1d_cuda')


@functools.lru_cache(maxsize=None)
def load_upstream(mamba: str, conv: str) -> Dict[str, types.ModuleType]:
    """Upstream's wrappers of these releases imported over the stand-ins, once per process: the modules by name.

    ``mamba_ssm/__init__.py`` imports its language models (and transformers), which the scan never calls, so the
    package is entered without running it: its ``ops`` modules are the real files.
    """
    mamba_dir, conv_dir = upstream_paths(mamba, conv)
    saved = {k: v for k, v in sys.modules.items() if _is_upstream(k)}
    for k in saved:
        del sys.modules[k]
    sys.modules['selective_scan_cuda'] = ScanCuda(uint64_offsets=tuple(int(p) for p in mamba.split('.')[:3]
                                                                       if p.isdigit()) >= (2, 3, 2))
    sys.modules['causal_conv1d_cuda'] = ConvCuda(conv_api(conv))
    sys.path[:0] = [mamba_dir, conv_dir]
    try:
        package = types.ModuleType('mamba_ssm')
        package.__path__ = [os.path.join(mamba_dir, 'mamba_ssm')]
        sys.modules['mamba_ssm'] = package
        importlib.import_module('causal_conv1d')
        importlib.import_module('mamba_ssm.ops.selective_scan_interface')
        loaded = {k: v for k, v in sys.modules.items() if _is_upstream(k)}
    finally:
        for k in [k for k in sys.modules if _is_upstream(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        del sys.path[:2]
    return loaded
