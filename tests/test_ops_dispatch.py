"""The ops dispatch (dvmsr_mma/ops/dispatch.py) and the kernel limits it applies (dvmsr_mma/ops/cuda_kernels.py).

Limits are checked on meta tensors: shapes and strides of any size, nothing allocated. Where a test needs the
order among CUDA paths, the device the dispatch sees is set to 'cuda'; nothing runs then.
"""
import logging
import sys
import types

import pytest
import torch
from kernel_standins import ConvCuda, ScanCuda
from test_ops_scan import make_inputs

from dvmsr_mma.archs.dvmsr_arch import DVMSR
from dvmsr_mma.archs.mma_arch import MMA_T
from dvmsr_mma.ops import cuda_kernels, dispatch, force_torch_ops, ops_path, selective_scan
from dvmsr_mma.utils.errors import OptionError

scan_mod = sys.modules['dvmsr_mma.ops.scan_torch']
HUGE_CHANNEL_LAST_L = 65535 * 64 + 1  # one step past the channel-last conv's grid.y limit: 4,194,241


def scan_tensors(b, d, n, l, device='meta', dtype=torch.float32, layout='mixer'):
    """The scan's arguments by name as the Mamba block passes them (z a half of xz in upstream's layout)."""
    xz = torch.empty(2 * d, b, l, device=device, dtype=dtype).permute(1, 0, 2)
    return dict(u=torch.empty(b, d, l, device=device, dtype=dtype), delta=torch.empty(d, b, l, device=device,
                dtype=dtype).permute(1, 0, 2), A=torch.empty(d, n, device=device),
                B=torch.empty(b, n, l, device=device, dtype=dtype), C=torch.empty(b, n, l, device=device, dtype=dtype),
                D=torch.empty(d, device=device), z=xz[:, d:], delta_bias=torch.empty(d, device=device))


def conv_tensors(b, d, l, width=4, channel_last=False, device='meta', dtype=torch.float32):
    if channel_last:  # what (b, l, 2d) -> transpose -> chunk gave before: strides (2 d l, 1, 2 d)
        x = torch.empty(b, l, 2 * d, device=device, dtype=dtype).transpose(1, 2)[:, :d]
    else:
        x = torch.empty(2 * d, b, l, device=device, dtype=dtype).permute(1, 0, 2)[:, :d]
    return dict(x=x, weight=torch.empty(d, width, device=device, dtype=dtype),
                bias=torch.empty(d, device=device, dtype=dtype))


@pytest.fixture
def kernels_on_meta(fresh_dispatch):
    """The kernels 'import' and serve meta tensors; mamba-ssm counts as older than 2.3.2 (uint32 offsets)."""
    fresh_dispatch.setattr(cuda_kernels, '_imported', {'selective_scan': (object(), None),
                                                       'causal_conv1d': (object(), None)})
    fresh_dispatch.setattr(cuda_kernels, 'KERNEL_DEVICES', ['meta'])
    fresh_dispatch.setattr(cuda_kernels, '_mamba_has_64bit_offsets', lambda: False)
    return fresh_dispatch


def _info(caplog):
    return [r.getMessage() for r in caplog.records if r.name == dispatch.__name__]


# --------------------------------------------------------------------------------------------- the table
def test_every_op_ends_in_a_torch_path_that_takes_anything():
    for op, row in dispatch.TABLE.items():
        assert row[-1].name in ('torch', 'graph') and dispatch.TORCH in row, op
        assert dispatch.TORCH.why_not({}, False) is None


def test_kernel_inputs_it_accepts_take_it(kernels_on_meta, caplog):
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('selective_scan', scan_tensors(2, 120, 16, 4096)) == 'kernel'
        assert dispatch.select('causal_conv1d', conv_tensors(2, 120, 4096)) == 'kernel'
    assert _info(caplog) == ['selective_scan: using the CUDA kernel (mamba_ssm) path.',
                             'causal_conv1d: using the CUDA kernel (causal_conv1d) path.']


# ------------------------------------------------------------------ case 1/2: conv layouts, grid, widths
@pytest.mark.parametrize('d', [20, 30, 6])
def test_channel_last_conv_input_not_divisible_by_8_goes_to_the_next_path(kernels_on_meta, caplog, d):
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('causal_conv1d', conv_tensors(2, d, 100, channel_last=True)) == 'torch'
        assert dispatch.select('causal_conv1d', conv_tensors(2, d, 100)) == 'kernel'  # upstream's layout
    (line, _) = _info(caplog)
    assert line.startswith(f'causal_conv1d: using the PyTorch path (not the CUDA kernel (causal_conv1d): x is '
                           f'channel-last with {d} channels')


def test_channel_last_conv_past_the_grid_limit_goes_to_the_next_path(kernels_on_meta, caplog):
    assert dispatch.select('causal_conv1d', conv_tensors(1, 64, HUGE_CHANNEL_LAST_L - 1, channel_last=True)) == 'kernel'
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('causal_conv1d', conv_tensors(1, 64, HUGE_CHANNEL_LAST_L, channel_last=True)) == 'torch'
        assert dispatch.select('causal_conv1d', conv_tensors(1, 64, HUGE_CHANNEL_LAST_L)) == 'kernel'
    assert 'one block per 64 steps, at most 65535' in _info(caplog)[0]


def test_the_mixer_gives_the_conv_its_b_d_l_layout():
    """Every width: the conv input has stride(-1) == 1, as upstream's Mamba builds xz (so never channel-last).
    The (b, d, l) route is the one for every path but numba, so the PyTorch path is forced to take it here."""
    seen = []
    real = sys.modules['dvmsr_mma.archs.mamba_block'].causal_conv1d

    def record(x, *args, **kwargs):
        seen.append(x.stride())
        return real(x, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(sys.modules['dvmsr_mma.archs.mamba_block'], 'causal_conv1d', record)
    try:
        with force_torch_ops():
            for dim in (6, 10, 30, 60):
                DVMSR(embed_dim=dim, depths=[1], upscale=2)(torch.rand(2, 3, 5, 4))
            MMA_T(upscale=2, num_block=1, num_feat=30)(torch.rand(1, 3, 4, 3))
    finally:
        mp.undo()
    assert seen and all(s[-1] == 1 for s in seen), seen


@pytest.mark.parametrize('width', [1, 5])
def test_conv_widths_outside_2_to_4_go_to_the_next_path(kernels_on_meta, width):
    assert dispatch.select('causal_conv1d', conv_tensors(1, 16, 10, width=width)) == 'torch'


# ------------------------------------------------------------------------- case 4: limits and dtypes
def test_d_state_past_256_and_fp64_go_to_the_next_path(kernels_on_meta, caplog):
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('selective_scan', scan_tensors(1, 8, 257, 10)) == 'torch'
        assert dispatch.select('selective_scan', scan_tensors(1, 8, 256, 10)) == 'kernel'
        assert dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10, dtype=torch.float64)) == 'torch'
        assert dispatch.select('causal_conv1d', conv_tensors(1, 8, 10, dtype=torch.float64)) == 'torch'
    lines = _info(caplog)
    assert "d_state 257 > 256, the kernel's limit" in lines[0]
    assert 'u is float64; the kernel takes float32, float16 and bfloat16' in lines[2]
    assert 'x is float64 and weight float64' in lines[3]


def test_dtype_mismatches_go_to_the_next_path(kernels_on_meta):
    t = scan_tensors(1, 8, 16, 10)
    t['D'] = t['D'].half()
    assert dispatch.select('selective_scan', t) == 'torch'
    t = conv_tensors(1, 8, 10)
    t['bias'] = t['bias'].half()
    assert dispatch.select('causal_conv1d', t) == 'torch'


def test_forced_kernel_that_refuses_the_inputs_is_one_line(kernels_on_meta):
    kernels_on_meta.setenv(dispatch.ENV_OPS, 'kernel')
    with pytest.raises(OptionError, match=r"^DVMSR_MMA_OPS=kernel: selective_scan cannot use the CUDA kernel "
                                          r"\(mamba_ssm\) path: d_state 300 > 256, the kernel's limit; unset "):
        dispatch.select('selective_scan', scan_tensors(1, 8, 300, 10))


def test_networks_with_d_conv_5_or_fp64_never_reach_the_kernels_that_refuse_them(fresh_dispatch):
    scan_calls = []

    def scan_kernel(*args, **kwargs):
        scan_calls.append(1)
        return scan_mod.selective_scan_torch(*args, **kwargs)

    fresh_dispatch.setattr(cuda_kernels, 'KERNEL_DEVICES', ['cpu'])
    fresh_dispatch.setattr(cuda_kernels, '_imported', {'selective_scan': (scan_kernel, None),
                                                       'causal_conv1d': (_fail, None)})
    torch.manual_seed(0)
    net, x = DVMSR(embed_dim=8, depths=[1], upscale=2, d_conv=5), torch.rand(1, 3, 4, 5)
    out = net(x)
    assert scan_calls  # the scan kernel takes d_conv 5; the conv kernel (2 to 4) is never called
    with force_torch_ops():
        assert torch.allclose(out, net(x), atol=1e-6)
    fresh_dispatch.setattr(cuda_kernels, '_imported', {'selective_scan': (_fail, None),
                                                       'causal_conv1d': (_fail, None)})
    net, x = net.double(), x.double()
    out = net(x)
    with force_torch_ops():
        assert torch.allclose(out, net(x), atol=1e-9)


def _fail(*args, **kwargs):
    raise AssertionError('the kernel was called for inputs it refuses')


# ------------------------------------------------------------------------- case 5: 32-bit index arithmetic
def test_uint32_offsets_go_to_the_next_path(kernels_on_meta, caplog):
    # MMA-B: d_inner 384. In the old layout x (half of a (b, l, 2 d) xz) reaches 2 * 384 * b * l: 2**32 at
    # b * l = 5.6M tokens; in upstream's layout it reaches b * 384 * l, so 11.2M
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('causal_conv1d', conv_tensors(2, 384, 2_800_000, channel_last=True)) == 'torch'
        assert dispatch.select('causal_conv1d', conv_tensors(2, 384, 2_800_000)) == 'kernel'
        assert dispatch.select('causal_conv1d', conv_tensors(4, 384, 2_800_000)) == 'torch'
        assert dispatch.select('selective_scan', scan_tensors(2, 384, 16, 2_800_000)) == 'kernel'
        assert dispatch.select('selective_scan', scan_tensors(4, 384, 16, 2_800_000)) == 'torch'
    lines = _info(caplog)
    assert 'past the 2**32 that causal-conv1d indexes in uint32' in lines[0]
    assert 'past the 2**32 that mamba-ssm < 2.3.2 indexes in uint32' in lines[-1]
    kernels_on_meta.setattr(cuda_kernels, '_mamba_has_64bit_offsets', lambda: True)  # 2.3.2: uint64_t
    assert dispatch.select('selective_scan', scan_tensors(4, 384, 16, 2_800_000)) == 'kernel'


@pytest.mark.parametrize('version, wide', [('2.3.1', False), ('2.3.2.post1', True), ('1.1.1', False),
                                           ('2.4.0', True)])
def test_mamba_offset_width_by_release(monkeypatch, version, wide):
    monkeypatch.setattr(cuda_kernels.importlib.metadata, 'version', lambda name: version)
    assert cuda_kernels._mamba_has_64bit_offsets() is wide


# ------------------------------------------------------------------------- case 3: half-broken installs
class _Refuse:
    """A meta-path finder that makes ``names`` raise ImportError, as a broken install does."""

    def __init__(self, names, message):
        self.names, self.message = names, message

    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.names:
            raise ImportError(self.message)
        return None


@pytest.mark.parametrize('arch', ['dvmsr', 'mma'])
def test_compiled_module_without_its_python_package_falls_back(fresh_dispatch, caplog, arch):
    """mamba-ssm <= 2.2.6 under transformers >= 5: selective_scan_cuda imports, mamba_ssm does not."""
    fresh_dispatch.setitem(sys.modules, 'selective_scan_cuda', ScanCuda(uint64_offsets=True))
    fresh_dispatch.setitem(sys.modules, 'causal_conv1d_cuda', ConvCuda('1.5'))
    for name in [k for k in sys.modules if k.split('.')[0] in ('mamba_ssm', 'causal_conv1d')]:
        fresh_dispatch.delitem(sys.modules, name)
    refuse = _Refuse({'mamba_ssm', 'causal_conv1d'}, "cannot import name 'GreedySearchDecoderOnlyOutput' from "
                                                     "'transformers.generation'")
    fresh_dispatch.setattr(sys, 'meta_path', [refuse] + sys.meta_path)
    fresh_dispatch.setattr(cuda_kernels, 'KERNEL_DEVICES', ['cpu'])
    torch.manual_seed(0)
    net = DVMSR(embed_dim=8, depths=[1], upscale=2) if arch == 'dvmsr' else MMA_T(upscale=2, num_block=1,
                                                                                   num_feat=30)
    x = torch.rand(1, 3, 5, 4)
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        out = net(x)
        net(x)
    with force_torch_ops():
        ref = net(x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert len(_records(caplog, logging.WARNING)) == 2  # installed but broken: one warning per op
    lines = _records(caplog, logging.INFO)
    assert len(lines) == 2, lines
    scan_line = next(line for line in lines if line.startswith('selective_scan'))
    assert ('not the CUDA kernel (mamba_ssm): selective_scan_cuda imports but mamba_ssm.ops.selective_scan_interface '
            "does not (ImportError: cannot import name 'GreedySearchDecoderOnlyOutput'") in scan_line
    assert 'causal_conv1d_cuda imports but causal_conv1d does not' in next(line for line in lines
                                                                             if line.startswith('causal_conv1d'))


def test_import_chain_is_probed_once(fresh_dispatch):
    calls = []
    real = cuda_kernels.importlib.import_module

    def counting(name):
        calls.append(name)
        return real(name)

    fresh_dispatch.setattr(cuda_kernels.importlib, 'import_module', counting)
    fresh_dispatch.setitem(sys.modules, 'selective_scan_cuda', None)  # None in sys.modules: ImportError
    first = cuda_kernels.import_problem('selective_scan')
    assert first.startswith('selective_scan_cuda is not importable (')
    assert cuda_kernels.import_problem('selective_scan') == first
    assert calls == ['selective_scan_cuda']


# ------------------------------------------------------------------------------------------ CPU order
def test_cpu_tensors_take_numba_unless_torch_is_asked(fresh_dispatch, caplog):
    inputs = scan_tensors(1, 2, 2, 5, device='cpu')
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('selective_scan', inputs) == 'numba'
        assert dispatch.select('causal_conv1d', conv_tensors(1, 2, 5, device='cpu')) == 'numba'
    assert _info(caplog) == ['selective_scan: using the numba CPU path.', 'causal_conv1d: using the numba CPU path.']
    assert dispatch.token_major(inputs['u'])  # so the mixer keeps (b, l, d)
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'torch')
    assert dispatch.select('selective_scan', inputs) == 'torch'
    assert dispatch.select('causal_conv1d', conv_tensors(1, 2, 5, device='cpu')) == 'torch'
    assert not dispatch.token_major(inputs['u'])
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'numba')
    assert dispatch.select('selective_scan', inputs) == 'numba'
    assert dispatch.select('causal_conv1d', conv_tensors(1, 2, 5, device='cpu')) == 'numba'
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'auto')
    with force_torch_ops():
        assert dispatch.select('selective_scan', inputs) == 'torch'
        assert not dispatch.token_major(inputs['u'])
    fresh_dispatch.setenv(dispatch.ENV_FORCE_TORCH, '1')
    assert dispatch.select('selective_scan', inputs) == 'torch'


def test_without_numba_the_torch_path_runs(fresh_dispatch):
    fresh_dispatch.setattr(dispatch, '_probe_cache', {dispatch.NUMBA_MODULE: None})
    inputs = make_inputs(1, 2, 2, 5, 0, True, True, False)
    calls = []
    real = scan_mod.selective_scan_torch
    fresh_dispatch.setattr(scan_mod, 'selective_scan_torch', lambda *a: calls.append(a) or real(*a))
    selective_scan(*inputs)
    assert len(calls) == 1
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'numba')
    with pytest.raises(OptionError, match=r'^DVMSR_MMA_OPS=numba: selective_scan cannot use the numba CPU path: '
                                          r'numba is not importable \(pip install numba\); unset DVMSR_MMA_OPS'):
        selective_scan(*inputs)


@pytest.mark.parametrize('value, message', [
    ('kernel', 'DVMSR_MMA_OPS=kernel: selective_scan cannot use the CUDA kernel (mamba_ssm) path: the tensors are '
               'not on CUDA'),
    ('fast', 'DVMSR_MMA_OPS=fast: not a path; use auto, kernel, triton, numba, torch'),
])
def test_bad_forced_path_is_one_line(fresh_dispatch, value, message):
    fresh_dispatch.setenv(dispatch.ENV_OPS, value)
    with pytest.raises(OptionError) as err:
        selective_scan(*make_inputs(1, 2, 2, 5, 0, False, False, False))
    assert str(err.value).startswith(message)


def test_ops_path_wins_over_the_environment_and_nests(fresh_dispatch):
    inputs = scan_tensors(1, 2, 2, 5, device='cpu')
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'numba')
    with ops_path('graph'):
        assert dispatch.select('selective_scan', inputs) == 'graph'
        assert dispatch.select('causal_conv1d', conv_tensors(1, 2, 5, device='cpu')) == 'torch'
        with ops_path('torch'):
            assert dispatch.select('selective_scan', inputs) == 'torch'
        assert dispatch.select('selective_scan', inputs) == 'graph'
    assert dispatch.select('selective_scan', inputs) == 'numba'
    with pytest.raises(ValueError, match="unknown path 'gpu'"):
        with ops_path('gpu'):
            pass


# ------------------------------------------------------------------------------------------ CUDA order
@pytest.fixture
def seen_as_cuda(fresh_dispatch):
    """The dispatch sees every call as CUDA tensors, with the Triton module compiled (not interpreted)."""
    triton_module = types.SimpleNamespace(INTERPRETED=False, version_problem=lambda: None)
    fresh_dispatch.setattr(dispatch, '_device', lambda tensors: 'cuda')
    fresh_dispatch.setattr(dispatch, '_probe_cache', {dispatch.TRITON_MODULE: triton_module})
    fresh_dispatch.setattr(cuda_kernels, '_imported', {'selective_scan': (object(), None),
                                                       'causal_conv1d': (object(), None)})
    return triton_module


def test_cuda_order_kernel_then_triton_then_torch(seen_as_cuda, fresh_dispatch, caplog):
    t = scan_tensors(1, 8, 16, 10)
    assert dispatch.select('selective_scan', t) == 'kernel'
    fresh_dispatch.setattr(cuda_kernels, '_imported', {'selective_scan': (None, 'selective_scan_cuda is not '
                                                                                'importable (ImportError: x)')})
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('selective_scan', t) == 'triton'
    assert _info(caplog) == ['selective_scan: using the Triton path (not the CUDA kernel (mamba_ssm): '
                             'selective_scan_cuda is not importable (ImportError: x)).']
    fresh_dispatch.setitem(dispatch._probe_cache, dispatch.TRITON_MODULE, None)
    assert dispatch.select('selective_scan', t) == 'torch'


def test_triton_refuses_fp64_complex_old_triton_and_the_interpreter(seen_as_cuda, fresh_dispatch, caplog):
    fresh_dispatch.setattr(cuda_kernels, '_imported', {'selective_scan': (None, 'no kernel')})
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10, dtype=torch.float64)) == 'torch'
    assert 'not the Triton: u is float64; the Triton scan takes float32, float16 and bfloat16' in _info(caplog)[0]
    t = scan_tensors(1, 8, 16, 10)
    t['A'] = torch.empty(8, 16, dtype=torch.complex64, device='meta')
    assert dispatch.select('selective_scan', t) == 'torch'
    fresh_dispatch.setattr(seen_as_cuda, 'version_problem', lambda: 'triton 2.3.1 has no reverse scan')
    assert dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10)) == 'torch'
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'triton')
    with pytest.raises(OptionError, match='^DVMSR_MMA_OPS=triton: selective_scan cannot use the Triton path: triton '
                                          '2.3.1 has no reverse scan; unset DVMSR_MMA_OPS'):
        dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10))
    fresh_dispatch.delenv(dispatch.ENV_OPS)
    fresh_dispatch.setattr(seen_as_cuda, 'version_problem', lambda: None)
    fresh_dispatch.setattr(seen_as_cuda, 'INTERPRETED', True)
    assert dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10)) == 'torch'  # auto never interprets CUDA
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'triton')
    assert dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10)) == 'triton'


def test_cpu_tensors_take_triton_only_when_forced_in_the_interpreter(fresh_dispatch):
    scan_triton = pytest.importorskip('dvmsr_mma.ops.scan_triton')
    inputs = scan_tensors(1, 2, 2, 5, device='cpu')
    assert dispatch.select('selective_scan', inputs) in ('numba', 'torch')
    fresh_dispatch.setenv(dispatch.ENV_OPS, 'triton')
    fresh_dispatch.setattr(scan_triton, 'INTERPRETED', True)
    assert dispatch.select('selective_scan', inputs) == 'triton'
    assert dispatch.select('causal_conv1d', conv_tensors(1, 2, 5, device='cpu')) == 'torch'
    fresh_dispatch.setattr(scan_triton, 'INTERPRETED', False)
    with pytest.raises(OptionError, match=r'^DVMSR_MMA_OPS=triton: selective_scan cannot use the Triton path: the '
                                          r'tensors are not on CUDA; Triton runs CPU tensors only in its interpreter'):
        dispatch.select('selective_scan', inputs)
    fresh_dispatch.setattr(dispatch, '_probe_cache', {dispatch.TRITON_MODULE: None})
    with pytest.raises(OptionError, match='^DVMSR_MMA_OPS=triton: selective_scan cannot use the Triton path: triton '
                                          'is not importable'):
        dispatch.select('selective_scan', inputs)


def test_triton_without_the_reverse_scan_is_refused(monkeypatch):
    scan_triton = pytest.importorskip('dvmsr_mma.ops.scan_triton')

    def associative_scan(input, axis, combine_fn, _builder=None, _generator=None):  # Triton 2.3's signature
        raise AssertionError

    monkeypatch.setattr(scan_triton.tl, 'associative_scan', associative_scan)
    scan_triton.version_problem.cache_clear()  # checked once per process; again here
    assert scan_triton.version_problem().endswith('has no tl.associative_scan(reverse=...); the Triton scan needs '
                                                  'triton >= 3.0 (torch >= 2.4)')
    monkeypatch.undo()
    scan_triton.version_problem.cache_clear()  # the real answer for the tests after this one


def test_log_is_once_per_op_path_and_reason(kernels_on_meta, caplog):
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        for _ in range(3):
            dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10))
            dispatch.select('selective_scan', scan_tensors(1, 8, 300, 10))
    assert len(_info(caplog)) == 2


def test_ops_imports_point_one_way():
    """Within dvmsr_mma/ops no module imports, at the top or inside a function, one that imports it back: the
    dispatch decides and holds the entry points; the implementations (scan_torch, conv_torch, the numba and Triton
    kernels, the ONNX graph) import nothing from it."""
    import ast
    import os
    folder = os.path.dirname(dispatch.__file__)
    graph = {}
    for name in os.listdir(folder):
        if name.endswith('.py') and name != '__init__.py':
            tree = ast.parse(open(os.path.join(folder, name)).read())
            targets = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    module = node.module or ''
                    if node.level == 1:
                        targets.add(module.split('.')[0] if module else None)
                    elif module.startswith('dvmsr_mma.ops.'):
                        targets.add(module.split('.')[2])
            graph[name[:-3]] = {t for t in targets if t}

    def reaches(start, goal, seen=()):
        return any(t == goal or (t not in seen and reaches(t, goal, seen + (t, ))) for t in graph.get(start, ()))

    circles = [m for m in graph if reaches(m, m)]
    assert circles == [], {m: graph[m] for m in circles}
    implementations = set(graph) - {'dispatch'}
    assert implementations >= {'scan_torch', 'conv_torch', 'scan_cpu', 'scan_lanes', 'conv_cpu', 'scan_triton',
                               'scan_graph'}
    for implementation in implementations:  # one module decides; the others import nothing from it
        assert 'dispatch' not in graph[implementation], implementation


def test_tensors_without_elements_go_past_the_kernel_and_triton(seen_as_cuda, caplog):
    """b = 0 (or l = 0): the CUDA kernels and Triton would launch an empty grid; the PyTorch path takes it."""
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert dispatch.select('selective_scan', scan_tensors(0, 8, 16, 10)) == 'torch'
        assert dispatch.select('causal_conv1d', conv_tensors(2, 8, 0)) == 'torch'
        assert dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10)) == 'kernel'
    assert _info(caplog)[:2] == [
        'selective_scan: using the PyTorch path (not the CUDA kernel (mamba_ssm): u (0, 8, 10) has no elements, and '
        'the kernel would launch an empty grid; not the Triton: u (0, 8, 10) has no elements, and the kernel would '
        'launch an empty grid).',
        'causal_conv1d: using the PyTorch path (not the CUDA kernel (causal_conv1d): x (2, 8, 0) has no elements, and '
        'the kernel would launch an empty grid).']


def _records(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == dispatch.__name__ and r.levelno == level]


@pytest.mark.parametrize('kernel', ['broken', 'absent'])
def test_a_broken_kernel_install_is_one_warning_an_absent_one_info(seen_as_cuda, fresh_dispatch, caplog, kernel):
    """Installed but not importable (a build against another torch): a WARNING, once, with the reason; not
    installed at all: only the INFO line of the path taken."""
    fresh_dispatch.setattr(cuda_kernels, '_imported', {})
    if kernel == 'broken':
        fresh_dispatch.setitem(sys.modules, 'selective_scan_cuda', ScanCuda(uint64_offsets=True))
        fresh_dispatch.setattr(sys, 'meta_path', [_Refuse({'mamba_ssm'}, 'undefined symbol: _ZN3c10')] + sys.meta_path)
        for name in [k for k in sys.modules if k.split('.')[0] == 'mamba_ssm']:
            fresh_dispatch.delitem(sys.modules, name)
    else:
        fresh_dispatch.setitem(sys.modules, 'selective_scan_cuda', None)
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        for _ in range(2):
            assert dispatch.select('selective_scan', scan_tensors(1, 8, 16, 10)) == 'triton'
    warnings = _records(caplog, logging.WARNING)
    if kernel == 'absent':
        assert warnings == []
    else:
        assert warnings == ['selective_scan: the CUDA kernel (mamba_ssm) path is installed but not used: '
                            'selective_scan_cuda imports but mamba_ssm.ops.selective_scan_interface does not '
                            '(ImportError: undefined symbol: _ZN3c10); fix that install or uninstall it']
    assert len(_records(caplog, logging.INFO)) == 1


def test_numba_installed_but_broken_is_one_warning(fresh_dispatch, caplog):
    fresh_dispatch.setattr(dispatch, '_probe_cache', {dispatch.NUMBA_MODULE: ImportError(
        'Numba needs NumPy 2.2 or less. Got NumPy 2.3.')})
    fresh_dispatch.setattr(cuda_kernels, 'installed', lambda name: name == 'numba')
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        for _ in range(2):
            assert dispatch.select('selective_scan', scan_tensors(1, 2, 2, 5, device='cpu')) == 'torch'
    assert _records(caplog, logging.WARNING) == [
        'selective_scan: the numba CPU path is installed but not used: numba is installed but does not import '
        '(ImportError: Numba needs NumPy 2.2 or less. Got NumPy 2.3.)']
    fresh_dispatch.setattr(cuda_kernels, 'installed', lambda name: False)
    fresh_dispatch.setattr(dispatch, '_logged', set())
    fresh_dispatch.setattr(dispatch, '_probe_cache', {dispatch.NUMBA_MODULE: ImportError('No module named numba')})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        dispatch.select('selective_scan', scan_tensors(1, 2, 2, 5, device='cpu'))
    assert _records(caplog, logging.WARNING) == []
    assert 'numba is not importable (pip install numba)' in _records(caplog, logging.INFO)[0]


@pytest.mark.parametrize('arch', ['dvmsr', 'mma'])
@pytest.mark.parametrize('forced_at', ['forward', 'backward'])
def test_checkpoint_recompute_runs_on_the_path_of_its_forward(fresh_dispatch, arch, forced_at):
    """``with force_torch_ops(): y = net(x)`` and the backward after the block (or the reverse): the checkpoint's
    recompute repeats the forward's path, so torch finds the tensors it saved, and the gradients are the PyTorch
    path's (forced at the forward) or the automatic path's (forced at the backward only)."""
    pytest.importorskip('numba')  # auto is the numba path: a different path from the forced one

    def build():
        torch.manual_seed(0)
        net = DVMSR(embed_dim=8, depths=[2], upscale=2, drop_path_rate=0., use_checkpoint=True) if arch == 'dvmsr' \
            else MMA_T(upscale=2, num_block=2, num_feat=30, use_checkpoint=True)
        return net.train()

    x = torch.rand(1, 3, 6, 5)
    net = build()
    with force_torch_ops(forced_at == 'forward'):
        y = net(x)
    with force_torch_ops(forced_at == 'backward'):
        y.square().mean().backward()
    reference = build()
    with force_torch_ops(forced_at == 'forward'):
        reference.use_checkpoint = False
        reference(x).square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_ops_path_auto_lifts_outer_forcing(fresh_dispatch):
    inputs = scan_tensors(1, 2, 2, 5, device='cpu')
    with force_torch_ops(), ops_path('auto'):
        assert dispatch.select('selective_scan', inputs) == ('numba' if dispatch.probe(dispatch.NUMBA_MODULE)
                                                             else 'torch')
        assert dispatch.requested_path() == ('auto', '')
