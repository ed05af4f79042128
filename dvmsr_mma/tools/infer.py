"""Inference on image files: build a network from an option file, a registry name or (DVMSR, MMA) the shapes of
its checkpoint, load weights strictly, upscale (optionally tile by tile), write ``<name>_x<s>.png``. Building from
a checkpoint and :class:`SRInferencer` need neither basicsr nor cv2 (ComfyUI, chaiNNer).

Conventions follow Real-ESRGAN's ``RealESRGANer`` (``realesrgan/utils.py``): ``tile`` / ``tile_pad`` with the
padded tile's output cropped back (no blending), ``half``, and alpha upscaled separately. Alpha goes through the
network as a 3-channel gray image by default (Real-ESRGAN's default ``alpha_upsampler='realesrgan'``); pass
``alpha='bicubic'`` for bicubic (OpenCV's ``INTER_CUBIC``), which is cheaper and never invents detail in a mask.
A constant alpha (an opaque image) is passed through unchanged either way.

Tiling and Mamba networks: with a conv net whose receptive-field radius (in LR pixels) is at most ``tile_pad``,
tiled output equals untiled output up to float rounding. A Mamba scan runs over the whole (padded) tile, so every
output pixel depends on every input pixel of its tile and tiled output cannot equal untiled output exactly; the
state decays along the scan, so a generous ``tile_pad`` (32 or more LR pixels) keeps the difference small.

Running out of memory (CPU or CUDA) is :class:`NotEnoughMemory`, one line with the size that failed, the memory
available and a ``--tile`` to use; it stops the whole run, since every later image would fail the same way.
"""
import math
import os
import re
import tempfile
import traceback
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from datasets_prep.common import IMG_EXTENSIONS, name_list
from dvmsr_mma.tools.detect import check_agrees, detect
from dvmsr_mma.tools.export import OnnxRunner
from dvmsr_mma.tools.weights import load_weights, read_state_dict
from dvmsr_mma.utils.errors import OptionError

# torch.OutOfMemoryError since torch 2.1 (CPU and CUDA); torch.cuda.OutOfMemoryError (same class there) since 1.13
_TORCH_OOM = getattr(torch, 'OutOfMemoryError', torch.cuda.OutOfMemoryError)
_CPU_ALLOC = re.compile(r'tried to allocate (\d+) bytes')  # DefaultCPUAllocator: can't allocate memory: ...
_CUDA_ALLOC = re.compile(r'Tried to allocate ([\d.]+) ([KMGT]i)?B')  # CUDA out of memory. Tried to allocate 3.58 GiB
_BINARY = {None: 1, 'Ki': 2 ** 10, 'Mi': 2 ** 20, 'Gi': 2 ** 30, 'Ti': 2 ** 40}


class NotEnoughMemory(OptionError):
    """The network ran out of memory on an image: the message says how much failed, how much is available and
    which ``--tile`` to use. Its own class so that :func:`infer_paths` stops on it rather than counting the image
    as failed and going on: after an out-of-memory error every later image of that size fails too."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch's out-of-memory error, whichever form this torch version and device raise it in: the class, or a
    plain RuntimeError from the CPU allocator (which torch 2.x still raises) or from older torch on CUDA."""
    if isinstance(err, _TORCH_OOM):
        return True
    msg = str(err)
    return isinstance(err, RuntimeError) and any(
        text in msg for text in ("can't allocate memory", 'DefaultCPUAllocator', 'out of memory'))


def allocation_bytes(msg: str) -> Optional[int]:
    """The size of the allocation that failed, from torch's CPU or CUDA out-of-memory message (None if absent)."""
    cpu = _CPU_ALLOC.search(msg)
    if cpu:
        return int(cpu.group(1))
    cuda = _CUDA_ALLOC.search(msg)
    return int(float(cuda.group(1)) * _BINARY[cuda.group(2)]) if cuda else None


def _first_int(path: str, prefix: str = '') -> Optional[int]:
    """The number after ``prefix`` on the first line of ``path`` starting with it; None if there is none (no such
    file, or a cgroup's ``max``, meaning no limit)."""
    try:
        with open(path, encoding='ascii') as f:
            return next((int(line[len(prefix):].split()[0]) for line in f if line.startswith(prefix)), None)
    except (OSError, ValueError, IndexError):
        return None


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory free for this process now, None if it cannot be told: the CUDA device's free memory; on the CPU the
    system's MemAvailable (page cache counts as available; SC_AVPHYS_PAGES, the fallback, counts only unused
    pages), or less where a container's cgroup (v2, else v1) limits this process to less."""
    if device.type == 'cuda':
        try:
            return torch.cuda.mem_get_info(device)[0]
        except RuntimeError:
            return None
    kib = _first_int('/proc/meminfo', 'MemAvailable:')
    try:
        free = kib * 1024 if kib is not None else os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (AttributeError, OSError, ValueError):
        free = None
    for limit_file, usage_file in (('memory.max', 'memory.current'), ('memory/memory.limit_in_bytes',
                                                                      'memory/memory.usage_in_bytes')):
        limit, usage = _first_int(f'/sys/fs/cgroup/{limit_file}'), _first_int(f'/sys/fs/cgroup/{usage_file}')
        if limit is not None and usage is not None:
            free = limit - usage if free is None else min(free, limit - usage)
            break
    return free


def format_bytes(n: int) -> str:
    """Decimal units, as free and df print them: ``3.84 GB``, ``512 MB``, ``15 kB``."""
    return f'{n / 1e9:.2f} GB' if n >= 1e9 else f'{n / 1e6:.0f} MB' if n >= 1e6 else f'{n / 1e3:.0f} kB'


def output_too_big(width: int, height: int, channels: int) -> str:
    """The message for an output image that does not fit in CPU memory, where smaller tiles cannot help."""
    available = available_bytes(torch.device('cpu'))
    return (f'out of memory on the CPU for the {width}x{height} output image itself (as float32: '
            f'{format_bytes(width * height * channels * 4)}'
            f'{f"; {format_bytes(available)} is available when idle" if available else ""}); '
            'smaller tiles do not help: free memory, or split the image')


def suggest_tile(h: int, w: int, tile: int, tile_pad: int, needed: Optional[int], available: Optional[int]) -> int:
    """A ``tile`` that should fit: memory scales with the padded tile's area. The failed allocation came on top of
    what was already in use, so the run needed at least about ``available + needed``; scale the area by half of
    ``available / (available + needed)`` (the failed allocation may not have been the last), and by at most 1/4
    (half the side) when either is unknown or the ratio says more. Rounded down to a multiple of 16, at least 32;
    when already tiled, always smaller than ``tile``."""
    side = math.sqrt(min(h, tile + 2 * tile_pad) * min(w, tile + 2 * tile_pad)) if tile else math.sqrt(h * w)
    ratio = 0.25 if not (needed and available) else min(0.25, 0.5 * available / (available + needed))
    new = max(32, (int(side * math.sqrt(ratio)) - 2 * tile_pad) // 16 * 16)
    if tile and new >= tile:
        new = tile // 2 // 16 * 16 or max(tile // 2, 1)
    return new


def build_network(opt: Union[str, Mapping, None] = None, arch: Optional[str] = None,
                  scale: Optional[int] = None) -> Tuple[nn.Module, int, Optional[str]]:
    """Network, scale and the option file's ``path.pretrain_network_g`` (or None).

    ``opt``: a BasicSR test/train option file (or its dict): ``network_g`` + ``scale``. ``arch``: any
    ``ARCH_REGISTRY`` name built with its default arguments, plus ``upscale=scale`` when ``scale`` is given.
    """
    import yaml
    try:
        import basicsr.archs  # noqa: F401  (BasicSR's own networks, e.g. SRVGGNetCompact)
    except ModuleNotFoundError as err:
        raise OptionError(f'{"-opt" if opt is not None else f"--arch {arch}"} needs basicsr (its registry of '
                          'networks), which is not installed; pass only --weights FILE for a DVMSR or MMA '
                          'checkpoint, or pip install --no-build-isolation basicsr==1.4.2') from err
    import dvmsr_mma  # noqa: F401  (fills the registries)
    # isort: split
    from basicsr.utils.registry import ARCH_REGISTRY

    from dvmsr_mma.utils.signatures import network_arguments_problem
    if (opt is None) == (arch is None):
        raise OptionError('give exactly one of -opt FILE or --arch TYPE')
    pretrain = None
    if opt is not None:
        if isinstance(opt, str):
            if not os.path.isfile(opt):
                raise OptionError(f'-opt: no such option file: {opt}')
            with open(opt, encoding='utf-8') as f:
                opt = yaml.safe_load(f)
        if not isinstance(opt, Mapping) or not isinstance(opt.get('network_g'), Mapping):
            raise OptionError('-opt: the option file has no network_g mapping')
        net_opt = dict(opt['network_g'])
        arch = net_opt.pop('type', None)
        if scale is not None and 'upscale' in net_opt:
            net_opt['upscale'] = scale
        scale = scale or opt.get('scale') or net_opt.get('upscale')
        pretrain = (opt.get('path') or {}).get('pretrain_network_g')
    else:
        net_opt = {} if scale is None else {'upscale': scale}
    try:
        cls = ARCH_REGISTRY.get(arch)
    except KeyError as err:
        raise OptionError(str(err.args[0] if err.args else err).replace('\n', ' ')) from err
    problem = network_arguments_problem(arch, cls, net_opt)
    if problem:
        raise OptionError(f'{"network_g" if opt is not None else "--arch"}: {problem}')
    net = cls(**net_opt)
    scale = scale or getattr(net, 'upscale', None) or getattr(net, 'scale', None)
    if not scale:
        raise OptionError(f'{arch}: cannot tell the scale; pass --scale')
    return net, int(scale), pretrain


def detect_network(weights: str, arch: Optional[str] = None, scale: Optional[int] = None,
                   required: bool = True) -> Optional[Tuple[nn.Module, int]]:
    """The DVMSR or MMA network ``weights`` holds (every size read from its shapes: :mod:`dvmsr_mma.tools.detect`),
    with the weights loaded; ``arch`` / ``scale``, when given, must agree (one line otherwise). What ``basicsr
    infer`` / ``export`` / ``lam`` / ``bench --weights W`` build without ``--arch``; needs no basicsr. A checkpoint
    of another network is one line, or None when not ``required`` (``--arch`` then builds it)."""
    state = read_state_dict(weights)
    found = detect(state)
    if found is None:
        if not required:
            return None
        raise OptionError(f'--weights: cannot tell the network of {weights} from its tensors (DVMSR and MMA '
                          'checkpoints are recognized); pass --arch TYPE or -opt FILE')
    check_agrees(found, weights, arch, scale)
    return load_weights(found.build(), weights, state), found.scale


def load_network(model: Any, scale: Optional[int] = None,
                 weights: Optional[str] = None) -> Tuple[nn.Module, int]:
    """The network and scale to run: an ``nn.Module`` as given; for None or a registry name with ``weights`` of a
    DVMSR or MMA network, the network those weights describe (:func:`detect_network`); else built from an option
    file / dict or a registry name (:func:`build_network`), with ``weights`` (else the option file's
    ``path.pretrain_network_g``) loaded strictly. Shared by :class:`SRInferencer`, ``basicsr export``, ``lam``
    and ``bench``."""
    if isinstance(model, nn.Module):
        net = model
        scale = scale or getattr(model, 'upscale', None)
        if not scale:
            raise OptionError('scale is needed for a bare nn.Module without .upscale')
    elif model is None:
        if not weights:
            raise OptionError('give -opt FILE, --arch TYPE or --weights FILE')
        return detect_network(weights, None, scale)
    elif isinstance(model, str) and not model.endswith(('.yml', '.yaml')) and not os.path.exists(model):
        found = detect_network(weights, model, scale, required=False) if weights else None
        if found:
            return found
        net, scale, _ = build_network(arch=model, scale=scale)
    else:
        net, scale, pretrain = build_network(opt=model, scale=scale)
        weights = weights or pretrain
    if weights:
        load_weights(net, weights)
    return net, int(scale)


def _onnx_scale(runner: Any, scale: Optional[int], weights: Optional[str], tile: int, device: Optional[str],
                half: Union[bool, str]) -> int:
    """The scale of an exported model, after refusing the options it fixes itself (one line each)."""
    if weights:
        raise OptionError('--weights: an ONNX model holds its weights; drop --weights')
    if half:
        raise OptionError('--fp16/--bf16: an ONNX model computes in the precision it was exported in '
                          '(basicsr export --fp16); drop the flag')
    if device not in (None, 'cpu'):
        raise OptionError(f'--device {device}: ONNX models run on onnxruntime\'s CPU provider; drop --device')
    if tile and runner.input_size:
        raise OptionError(f'--tile: {runner.path} takes {runner.input_size[0]}x{runner.input_size[1]} inputs, so '
                          'that is the tile size; drop --tile (--tile-pad still sets the context)')
    if scale and scale != runner.scale:
        raise OptionError(f'--scale {scale}: {runner.path} upscales x{runner.scale}')
    return runner.scale


def tile_spans(n: int, tile: int, pad: int, window: Optional[int] = None) -> List[Tuple[int, int, int, int]]:
    """Along one image axis of ``n`` pixels: (start, end) of each tile and (start, end) of the input it is run on.

    That input is the tile plus ``pad`` pixels each side, clipped at the border (Real-ESRGAN). With ``window``
    (a model that takes exactly that many pixels; ``n >= window``) tiles are ``window - 2 pad`` pixels and each
    input exactly ``window`` pixels, shifted inside the image at the borders (border tiles get their missing
    context from the inner side); an axis of exactly ``window`` pixels is one input, untiled.
    """
    if window:
        if n <= window:
            return [(0, n, 0, n)]
        tile = window - 2 * pad
    spans = []
    for start in range(0, n, tile):
        end = min(start + tile, n)
        lo = min(max(start - pad, 0), n - window) if window else max(start - pad, 0)
        spans.append((start, end, lo, lo + window if window else min(end + pad, n)))
    return spans


class SRInferencer:
    """Upscale numpy images (OpenCV layout: HxW gray, HxWx3 BGR, HxWx4 BGRA; uint8 or uint16).

    ``model``: an ``nn.Module``, an option file / dict, a registry name, or None with ``weights`` of a DVMSR or
    MMA network (built from their shapes, without basicsr: :func:`load_network`). ``tile`` (LR pixels, 0 = whole
    image) and ``tile_pad`` as Real-ESRGAN: each tile is run with ``tile_pad`` extra pixels of context on every
    side (clipped at the image border) and the matching part of the output is kept. ``half``: True/'fp16' or
    'bf16' runs the network in that dtype (CUDA; bf16 also works on CPU). ``alpha``: 'network' or 'bicubic'.
    ``model`` can also be an exported ``.onnx`` file or its :class:`~dvmsr_mma.tools.export.OnnxRunner`: the runner is
    called instead of the network, and a fixed-size one sets the tiles (its input size; ``tile_pad`` of context).
    """

    def __init__(self, model: Any = None, scale: Optional[int] = None, weights: Optional[str] = None, tile: int = 0,
                 tile_pad: int = 10, device: Optional[str] = None, half: Union[bool, str] = False,
                 alpha: str = 'network'):
        if isinstance(model, str) and model.lower().endswith('.onnx'):
            model = OnnxRunner(model)
        if isinstance(model, OnnxRunner):
            net, scale = model, _onnx_scale(model, scale, weights, tile, device, half)
            device = 'cpu'
        else:
            net, scale = load_network(model, scale, weights)
        if alpha not in ('network', 'bicubic'):
            raise OptionError(f"alpha must be 'network' or 'bicubic', got {alpha!r}")
        if tile < 0 or tile_pad < 0:
            raise OptionError('tile and tile_pad must be >= 0')
        # an exported model of fixed size takes exactly that (h, w): tiles are cut to it (see tile_spans)
        self.window = net.input_size if isinstance(net, OnnxRunner) else None
        if self.window and min(self.window) <= 2 * tile_pad:
            raise OptionError(f'--tile-pad {tile_pad}: the model takes {self.window[0]}x{self.window[1]} tiles, which '
                              f'leaves no room for {tile_pad} pixels of context on each side; pass --tile-pad '
                              f'{(min(self.window) - 1) // 2} or less')
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise OptionError('--device cuda: no CUDA device available')
        self.dtype = {False: torch.float32, None: torch.float32, True: torch.float16, 'fp16': torch.float16,
                      'bf16': torch.bfloat16}[half]
        self.net = net if isinstance(net, OnnxRunner) else net.eval().to(self.device, self.dtype)
        self.scale, self.tile, self.tile_pad, self.alpha = int(scale), int(tile), int(tile_pad), alpha

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) float in [0, 1] on any device -> (1, 3, h*s, w*s) float32 on the CPU, tiled if set.

        Out of memory raises :class:`NotEnoughMemory` (see :meth:`_not_enough_memory`)."""
        try:
            x = x.to(self.device, self.dtype)
            if self.window:
                return self._run_fixed(x)
            if not self.tile or (x.shape[2] <= self.tile and x.shape[3] <= self.tile):
                return self.net(x).float().cpu()
            return self._run_tiled(x)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise self._not_enough_memory(err, x.shape[2], x.shape[3]) from err

    def _not_enough_memory(self, err: RuntimeError, h: int, w: int) -> NotEnoughMemory:
        """The one-line error for an out-of-memory ``err`` on an ``h`` x ``w`` image. The frames of ``err``'s
        traceback are cleared first and the CUDA cache emptied, so that the network's activations they hold are
        freed: the memory measured as available is then what a retry gets, and so is the caller's process. With a
        CUDA network the CPU can still be what ran out (the output image is assembled there)."""
        traceback.clear_frames(err.__traceback__)
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()
        msg = str(err)
        device = torch.device('cpu') if "can't allocate memory" in msg else self.device
        needed, available = allocation_bytes(msg), available_bytes(device)
        where = 'the CPU' if device.type == 'cpu' else str(device)
        amounts = [f'it needed {format_bytes(needed)} more' if needed else '',
                   f'{format_bytes(available)} is available when idle' if available else '']
        amounts_text = f' ({"; ".join(a for a in amounts if a)})' if any(amounts) else ''
        tiled = bool(self.tile) and (h > self.tile or w > self.tile)
        tile = suggest_tile(h, w, self.tile if tiled else 0, self.tile_pad, needed, available)
        fix = (f'pass a smaller tile, e.g. --tile {tile}' if tiled
               else f'pass --tile {tile} (or smaller) to upscale it tile by tile')
        return NotEnoughMemory(f'out of memory on {where} upscaling a {w}x{h} image'
                               f'{f" with --tile {self.tile}" if tiled else ""}{amounts_text}; {fix}')

    def _run_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """Tiles of exactly ``self.window``; an image smaller than that is first padded (edge pixels repeated)
        and the output cropped back."""
        h, w = x.shape[2:]
        wh, ww = self.window
        if h < wh or w < ww:
            x = torch.nn.functional.pad(x, (0, max(ww - w, 0), 0, max(wh - h, 0)), mode='replicate')
        return self._run_tiled(x, self.window)[:, :, :h * self.scale, :w * self.scale]

    def _run_tiled(self, x: torch.Tensor, window: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        b, c, h, w = x.shape
        s, t, p = self.scale, self.tile, self.tile_pad
        try:
            out = torch.zeros(b, c, h * s, w * s)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise NotEnoughMemory(output_too_big(w * s, h * s, b * c)) from err
        for y0, y1, py0, py1 in tile_spans(h, t, p, window[0] if window else None):
            for x0, x1, px0, px1 in tile_spans(w, t, p, window[1] if window else None):
                sr = self.net(x[:, :, py0:py1, px0:px1]).float().cpu()  # padded tile -> its SR
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = sr[:, :, oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
        return out

    def _rgb(self, bgr: np.ndarray, peak: float) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))).float().div_(peak)[None]
        y = self.run(x)[0].clamp_(0, 1).numpy()  # (3, H, W) RGB
        return y.transpose(1, 2, 0)[:, :, ::-1]  # -> (H, W, 3) BGR

    def _alpha(self, a: np.ndarray, peak: float) -> np.ndarray:
        """(h, w) alpha -> (H, W) float in [0, 1]. A constant alpha (an opaque image) comes back as that constant
        exactly: the network, fed a flat gray image, returns a slightly uneven one (an opaque logo came back with
        alpha down to 194), and bicubic rounding is no better than the value itself."""
        if a.min() == a.max():
            return np.full((a.shape[0] * self.scale, a.shape[1] * self.scale), a.flat[0] / peak, np.float32)
        if self.alpha == 'network':
            return self._rgb(np.repeat(a[:, :, None], 3, axis=2), peak).mean(axis=2)
        # torch's bicubic is OpenCV's INTER_CUBIC (a = -0.75, pixel centres, edge pixels repeated): no cv2 needed
        x = torch.from_numpy(a.astype(np.float32) / peak)[None, None]
        up = torch.nn.functional.interpolate(x, scale_factor=self.scale, mode='bicubic', align_corners=False)
        return up[0, 0].clamp_(0, 1).numpy()

    def enhance(self, img: np.ndarray) -> np.ndarray:
        """Upscale one image; same layout and dtype out as in (uint8 -> uint8, uint16 -> uint16). numpy and torch
        only (no cv2), so it runs in the inference-only install."""
        if img.dtype == np.uint16:
            peak = 65535.
        elif img.dtype == np.uint8:
            peak = 255.
        else:
            raise OptionError(f'unsupported image dtype {img.dtype} (8- or 16-bit images only)')
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
            raise OptionError(f'unsupported image shape {img.shape} (HxW gray, HxWx3 BGR or HxWx4 BGRA)')
        gray = img.ndim == 2 or img.shape[2] == 1
        img2 = img.reshape(img.shape[0], img.shape[1], -1)
        color = np.repeat(img2, 3, axis=2) if gray else img2[:, :, :3]
        out = self._rgb(color, peak)
        if gray:
            out = out.mean(axis=2, keepdims=True)  # the three channels went in equal
        if img2.shape[2] == 4:
            out = np.concatenate([out, self._alpha(img2[:, :, 3], peak)[:, :, None]], axis=2)
        out = np.rint(out * peak).astype(img.dtype)
        return out[:, :, 0] if img.ndim == 2 else out

def read_image(path: str) -> np.ndarray:
    """cv2 image with its bit depth and alpha kept; OptionError naming the file if it cannot be decoded."""
    from dvmsr_mma.tools.image_io import read_image as decode_file
    img = decode_file(path)  # one ImageReadError line for any failure, the decoder's pixel cap included
    if img.dtype not in (np.uint8, np.uint16):
        raise OptionError(f'{path}: {img.dtype} pixels; only 8- and 16-bit images are supported')
    return img


def output_path(in_path: str, out_dir: str, scale: int) -> str:
    return os.path.join(out_dir, f'{os.path.splitext(os.path.basename(in_path))[0]}_x{scale}.png')


def list_inputs(path: str) -> List[str]:
    """Files to process: the file itself, or every file directly in the folder (non-images included, so they
    are reported rather than silently skipped; hidden files are skipped). A folder without a single image is an
    error: a run that writes nothing and exits 0 looks like success."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f'-i: no such file or folder: {path}')
    files = [n for n in sorted(os.listdir(path)) if not n.startswith('.') and os.path.isfile(os.path.join(path, n))]
    if not any(n.lower().endswith(IMG_EXTENSIONS) for n in files):
        held = f'it holds only other files ({name_list(files, 3)})' if files else 'it holds no files'
        raise OptionError(f'-i: no images in {path}: {held}; looked for *{" *".join(IMG_EXTENSIONS)} '
                          '(sub-folders are not searched); point -i at a folder of images or at one image')
    return [os.path.join(path, n) for n in files]


def prepare_output_dir(path: str) -> None:
    """Create the output folder and prove it is writable (a temporary file made and removed in it), so that a
    wrong ``-o`` is one line before any image is processed, not a traceback or one failure per image."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OptionError(f'-o: {path} is a file, not a folder; name a folder (it is created if missing)')
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OptionError(f'-o: cannot create the folder {path} ({err.strerror or err}); '
                          'name a folder you can write to') from err
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix='.write-test-'):
            pass
    except OSError as err:
        raise OptionError(f'-o: cannot write files in the folder {path} ({err.strerror or err}); '
                          'name a folder you can write to') from err


def infer_paths(inferencer: SRInferencer, inputs: List[str], out_dir: str,
                progress: bool = True) -> Tuple[List[str], Dict[str, str]]:
    """Upscale every input file into ``out_dir``; returns (written paths, {input path: error message}).

    A bad file is reported and the rest processed; running out of memory stops the run (:class:`NotEnoughMemory`
    naming the image), as every later image would fail too."""
    import cv2
    from tqdm import tqdm
    prepare_output_dir(out_dir)
    written, failed = [], {}
    for path in tqdm(inputs, desc='infer', unit='img', disable=not progress):
        try:
            if not path.lower().endswith(IMG_EXTENSIONS):
                raise OptionError(f'{path}: not an image file (extensions: {" ".join(IMG_EXTENSIONS)})')
            img = read_image(path)
            try:
                out = inferencer.enhance(img)
            except MemoryError as err:  # numpy, making the 8/16-bit output image from the network's
                s = inferencer.scale
                channels = img.shape[2] if img.ndim == 3 else 1
                raise NotEnoughMemory(output_too_big(img.shape[1] * s, img.shape[0] * s, channels)) from err
            dst = output_path(path, out_dir, inferencer.scale)
            ok, buf = cv2.imencode('.png', out)
            if not ok:
                raise OptionError(f'{path}: could not encode the output PNG')
            buf.tofile(dst)
            written.append(dst)
        except NotEnoughMemory as err:
            raise NotEnoughMemory(f'{path}: {err}') from err
        except (OptionError, OSError) as err:
            failed[path] = str(err)
    return written, failed
