"""ONNX export of a network (DVMSR, MMA or any registered one), checked in onnxruntime, and :class:`OnnxRunner`,
which runs an exported model where :class:`~dvmsr_mma.tools.infer.SRInferencer` would run the torch network.

The graph is made by ``torch.export`` (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``), never on
the CUDA kernels or the numba scan. The TorchScript exporter is not used: it traced the scan inside the PyTorch
path's ``autograd.Function`` into constants (86 nodes for a tiny DVMSR, right on the traced input only; a tiny
MMA-T was off by 1.6e-3 even there). For the same reason the check runs a second random input, never the one the
graph was made with.

Two kinds of graph. Fixed size (the default, ``--size``, 64x64 LR): the exact PyTorch path
(:func:`~dvmsr_mma.ops.force_torch_ops`), whose scan cuts the h*w tokens into about sqrt(h*w) chunks with Python
loops, so the graph unrolls them for that one size. ``dynamic=True``: a symbolic height and width, with the scan
whose graph does not depend on the length (:mod:`dvmsr_mma.ops.scan_graph`: fixed-length chunks, two ONNX
``Scan`` loops; ``ops_path('graph')``), checked in onnxruntime at the traced size, twice it and an odd size.
Convolutional networks export dynamic as they are (tested: BasicSR's SRVGGNetCompact). Either way the nodes'
debugging metadata (torch's stack traces, 4.5 MB of a 6.7 MB DVMSR file) is dropped.
"""
import contextlib
import copy
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

from dvmsr_mma.ops import force_torch_ops
from dvmsr_mma.ops.dispatch import ops_path
from dvmsr_mma.ops.scan_graph import CHUNK
from dvmsr_mma.utils.errors import OptionError

FP32_TOLERANCE = 1e-4
# An fp16 graph is checked against the fp32 PyTorch network. Measured on the released DVMSR x4, 64x64 uniform-noise
# input (harder than photos: its output spans -0.56..1.53): onnxruntime's fp16 graph is off by up to 2.49e-2,
# PyTorch's own fp16 (CPU) by 1.04e-2. 5e-2 passes those and still fails a broken graph (errors of order 0.1-1).
FP16_TOLERANCE = 5e-2
METADATA_SCALE = 'dvmsr_mma.scale'  # written into the model: read back where the shapes are symbolic
METADATA_ARCH = 'dvmsr_mma.arch'


# what a network raises for an input size it cannot take (BasicSR's pixel_unshuffle asserts, for one)
_CANNOT_TAKE = (RuntimeError, ValueError, AssertionError)


class ExportCheckFailed(Exception):
    """onnxruntime's output differs from PyTorch's by more than the tolerance; the file was not written."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: ``size`` is None for a dynamic graph; ``max_abs_diff`` None when unchecked."""
    path: str
    arch: str
    scale: int
    size: Optional[Tuple[int, int]]
    fp16: bool
    opset: int
    max_abs_diff: Optional[float] = None
    tolerance: Optional[float] = None

    def summary(self) -> str:
        size = 'dynamic HxW' if self.size is None else f'{self.size[0]}x{self.size[1]} LR'
        text = (f'wrote {self.path} ({self.arch} x{self.scale}, {size} input, {"fp16" if self.fp16 else "fp32"}, '
                f'opset {self.opset})')
        if self.max_abs_diff is None:
            return f'{text}; not checked (--no-check)'
        return (f'{text}; onnxruntime vs PyTorch on a random input: max abs diff {self.max_abs_diff:.2e} '
                f'(tolerance {self.tolerance:.0e})')


def require(module: str) -> Any:
    """Import one of the ``[onnx]`` extra's packages; missing, it is one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise OptionError(f'{module} is not installed: ONNX export and basicsr infer --onnx need the [onnx] extra '
                          "(pip install 'dvmsr_mma[onnx]')") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f'{type(err).__name__}: {text.splitlines()[0]}' if text else type(err).__name__


def _random_input(size: Tuple[int, int], seed: int) -> torch.Tensor:
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def ort_session(path: str) -> Any:
    """An onnxruntime session on the CPU provider, quiet (export checks and `basicsr infer --onnx` use it)."""
    ort = require('onnxruntime')
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: its error lines would repeat what the one-line error says
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _max_abs_diff(session: Any, net: nn.Module, size: Tuple[int, int], seed: int, fp16: bool) -> Optional[float]:
    """Largest |onnxruntime - PyTorch fp32| on one random (1, 3, h, w) input in [0, 1]; None if PyTorch cannot
    take that size. onnxruntime's errors propagate."""
    x = _random_input(size, seed)
    try:
        with torch.no_grad(), force_torch_ops():
            ref = net(x).numpy()
    except _CANNOT_TAKE:
        return None
    feed = x.numpy().astype(np.float16 if fp16 else np.float32)
    out = session.run(None, {session.get_inputs()[0].name: feed})[0].astype(np.float32)
    return float(np.abs(out - ref).max()) if out.shape == ref.shape else float('inf')


def _check_dynamic(session: Any, net: nn.Module, arch: str, size: Tuple[int, int], fp16: bool,
                   tolerance: float) -> None:
    """A dynamic graph can be right at the traced size and wrong or failing elsewhere (Python ints of the trace,
    such as the scan's chunk length, stay baked in; twice the size even passes by chance): run twice the size and
    an odd one, where PyTorch takes it."""
    h, w = size
    for seed, (sh, sw) in enumerate(((2 * h, 2 * w), (h + 1, w + 3)), start=2):
        try:
            diff = _max_abs_diff(session, net, (sh, sw), seed, fp16)
        except Exception as err:  # onnxruntime's own error types
            raise OptionError(f'--dynamic: the {arch} graph fails in onnxruntime at {sh}x{sw} '
                              f'({_first_line(err)[:200]}); export a fixed size with --size HxW') from err
        if diff is not None and not diff <= tolerance:  # NaN fails too
            raise OptionError(f'--dynamic: the {arch} graph is wrong at {sh}x{sw} in onnxruntime (max abs diff '
                              f'{diff:.2e}); export a fixed size with --size HxW')


def _temp_path(path: str) -> str:
    """A temporary name next to ``path`` (same file system, so the final ``os.replace`` is atomic), as the
    package's checkpoints are written (``dvmsr_mma.utils.checkpoint_io``)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OptionError(f'--onnx: {path} is a folder; name the .onnx file to write')
    if not os.path.isdir(folder):
        raise OptionError(f'--onnx: no such folder: {folder}')
    if not os.access(folder, os.W_OK):
        raise OptionError(f'--onnx: cannot write in the folder {folder}')
    return f'{path}.tmp{os.getpid()}'


def export_onnx(net: nn.Module, path: str, scale: int, size: Tuple[int, int] = (64, 64), opset: Optional[int] = None,
                fp16: bool = False, dynamic: bool = False, check: bool = True) -> ExportResult:
    """Write ``net`` (eval mode, (1, 3, h, w) in [0, 1] -> (1, 3, h*scale, w*scale)) to ``path`` as ONNX.

    ``size`` is the LR input height and width of the graph (with ``dynamic``, the size it is traced and first
    checked at). ``fp16``: the graph computes in float16 and takes and returns float16. ``check``: onnxruntime (CPU)
    and the fp32 PyTorch network run one random input (with ``dynamic``, also at two other sizes); above
    :data:`FP32_TOLERANCE` (:data:`FP16_TOLERANCE` for fp16) the file is removed and :class:`ExportCheckFailed`
    raised. The file is written to a temporary name and renamed, so ``path`` is never left half-written or
    unchecked. ``opset`` None is torch's default.
    """
    require('onnx')
    require('onnxscript')  # torch.onnx's dynamo exporter imports it lazily, with a long message
    if check:
        require('onnxruntime')
    if not str(path).lower().endswith('.onnx'):
        raise OptionError(f'--onnx: {path}: the file name must end in .onnx')
    h, w = size
    arch = type(net).__name__
    net = net.eval()
    sample = _random_input(size, 0)
    try:
        with torch.no_grad(), force_torch_ops():
            out = net(sample)
    except _CANNOT_TAKE as err:
        raise OptionError(f'--size {h}x{w}: {arch} cannot take a {h}x{w} input ({_first_line(err)}); pass '
                          'another --size') from err
    if tuple(out.shape) != (1, 3, h * scale, w * scale):
        raise OptionError(f'{arch}: a (1, 3, {h}, {w}) input gave {tuple(out.shape)}, not (1, 3, {h * scale}, '
                          f'{w * scale}); the network must take and return RGB and upscale by --scale {scale}')
    graph_net = copy.deepcopy(net).half() if fp16 else net
    tmp = _temp_path(path)
    try:
        trace = _random_input(_trace_size(size), 0) if dynamic else sample
        program = _onnx_program(graph_net, trace.half() if fp16 else trace, arch, opset, dynamic)
        # unique value names: unoptimized, a node output can take a buffer's name (MMA's mean: ReduceMean 'mean')
        require('onnx_ir').passes.common.NameFixPass()(program.model)
        _drop_node_metadata(program.model)
        program.model.metadata_props.update({METADATA_SCALE: str(scale), METADATA_ARCH: arch})
        program.save(tmp, external_data=False)
        opset_used = next((op.version for op in require('onnx').load(tmp).opset_import
                           if op.domain in ('', 'ai.onnx')), opset or 0)
        result = ExportResult(os.path.abspath(path), arch, scale, None if dynamic else (h, w), fp16, opset_used)
        if check:
            result.tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
            result.max_abs_diff = _check(tmp, net, arch, size, fp16, dynamic, result.tolerance)
        os.replace(tmp, path)
        return result
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _trace_size(size: Tuple[int, int]) -> Tuple[int, int]:
    """What a dynamic graph is traced at: ``size`` times the smallest integer that leaves no size of 1 in the
    graph, the scan's chunk count included (1 up to :data:`~dvmsr_mma.ops.scan_graph.CHUNK` tokens), since
    torch.export fixes those (its 0/1 rule) and the graph would fail at other sizes; an integer multiple keeps what
    the network asks of sizes (multiples of a window, a pixel-unshuffle factor)."""
    h, w = size
    m = 1
    while min(h, w) * m < 2 or h * w * m * m <= CHUNK:
        m += 1
    return h * m, w * m


def _drop_node_metadata(model: Any) -> None:
    """Clear every node's metadata (Scan bodies included): torch's stack traces, class hierarchies and FX names,
    for debugging the exporter; onnxruntime ignores them."""
    for node in require('onnx_ir').traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()


@contextlib.contextmanager
def _quiet_export_log() -> Iterator[None]:
    """Silence two logs that misread a dynamic export: ``torch.export``'s, whose first, strict attempt fails on the
    symbolic sizes and logs an ERROR line (``always_classified is unsupported``) before torch.onnx's next attempt
    succeeds, and onnx_ir's warning that an empty list attribute (the first scan's ``scan_output_directions``: it
    emits nothing) defaults to ints, which is right. A real failure still raises, reported in one line."""
    loggers = [logging.getLogger(name) for name in ('torch.export._trace', 'onnx_ir._convenience')]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _onnx_program(net: nn.Module, sample: torch.Tensor, arch: str, opset: Optional[int], dynamic: bool) -> Any:
    """torch.export -> ONNX on the PyTorch ops path (dynamic: its length-independent scan); a failure is one
    line. Without onnxscript's graph optimizer: on the released DVMSR x4 at 64x64 (20,574 nodes) it took 970 s after
    a 129 s export, and onnxruntime optimizes the graph itself when it loads it."""
    dynamic_shapes = ({2: torch.export.Dim('height'), 3: torch.export.Dim('width')}, ) if dynamic else None
    try:
        with torch.no_grad(), ops_path('graph') if dynamic else force_torch_ops(), _quiet_export_log():
            return torch.onnx.export(net, (sample, ), None, dynamo=True, input_names=['input'], output_names=['output'],
                                     opset_version=opset, dynamic_shapes=dynamic_shapes, verbose=False,
                                     optimize=False)
    except Exception as err:  # torch.export raises many types (UserError, GuardOnDataDependentSymNode, ...)
        if dynamic:
            raise OptionError(f'--dynamic: {arch} cannot be exported with a dynamic height and width '
                              f'({_first_line(err)[:300]}); export a fixed size with --size HxW') from err
        raise OptionError(f'{arch}: ONNX export failed ({_first_line(err)[:300]})') from err


def _check(path: str, net: nn.Module, arch: str, size: Tuple[int, int], fp16: bool, dynamic: bool,
           tolerance: float) -> float:
    """The max abs difference at ``size``; :class:`ExportCheckFailed` above ``tolerance`` (or if onnxruntime
    cannot run the graph), one :class:`OptionError` line for a dynamic graph that fails at other sizes."""
    session = ort_session(path)
    try:
        diff = _max_abs_diff(session, net, size, 1, fp16)
    except Exception as err:  # onnxruntime's own error types
        raise ExportCheckFailed(f'onnxruntime cannot run the exported graph ({_first_line(err)[:300]}); '
                                'not written') from err
    if dynamic:
        _check_dynamic(session, net, arch, size, fp16, tolerance)
    if not diff <= tolerance:  # NaN fails too
        raise ExportCheckFailed(f'onnxruntime vs PyTorch max abs diff {diff:.2e} is above the tolerance '
                                f'{tolerance:.0e}; not written')
    return diff


class OnnxRunner:
    """An exported model called like the torch network in :class:`~dvmsr_mma.tools.infer.SRInferencer`:
    (1, 3, h, w) float tensor in [0, 1] -> (1, 3, h*s, w*s) float32 tensor on the CPU, on onnxruntime's CPU provider.

    ``input_size`` is the graph's fixed (h, w), None for a dynamic graph; ``scale`` comes from the input and output
    shapes, else from the ``dvmsr_mma.scale`` metadata :func:`export_onnx` writes. A float16 graph is fed float16.
    """

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f'--onnx: no such file: {path}')
        require('onnxruntime')
        try:
            self.session = ort_session(path)
        except Exception as err:  # onnxruntime's own error types
            raise OptionError(f'--onnx: {path} is not a model onnxruntime can load ({_first_line(err)[:300]})') from err
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
            raise OptionError(f'--onnx: {path} must take one (1, 3, h, w) image and return one; it has '
                              f'{len(inputs)} input(s) and {len(outputs)} output(s)')
        if inputs[0].type not in ('tensor(float)', 'tensor(float16)'):
            raise OptionError(f'--onnx: {path} takes {inputs[0].type}; only float and float16 models can run')
        self.input_name = inputs[0].name
        self.dtype = np.float16 if inputs[0].type == 'tensor(float16)' else np.float32
        _, channels, ih, iw = inputs[0].shape
        _, _, oh, ow = outputs[0].shape
        if channels != 3:
            raise OptionError(f'--onnx: {path} takes {channels} channels; basicsr infer feeds RGB (3 channels)')
        fixed = all(isinstance(v, int) for v in (ih, iw, oh, ow))
        self.input_size = (ih, iw) if fixed else None
        meta = self.session.get_modelmeta().custom_metadata_map
        if fixed and oh % ih == 0 and oh // ih == ow // iw and ow % iw == 0:
            self.scale = oh // ih
        elif str(meta.get(METADATA_SCALE, '')).isdigit():
            self.scale = int(meta[METADATA_SCALE])
        else:
            raise OptionError(f'--onnx: cannot tell the scale of {path} (input {inputs[0].shape}, output '
                              f'{outputs[0].shape}, no {METADATA_SCALE} metadata)')

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().cpu().numpy().astype(self.dtype)
        return torch.from_numpy(self.session.run(None, {self.input_name: feed})[0].astype(np.float32))
