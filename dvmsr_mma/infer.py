"""Inference on image files: build a network from an option file or a registry name, load weights strictly,
upscale (optionally tile by tile), write ``<name>_x<s>.png``.

Conventions follow Real-ESRGAN's ``RealESRGANer`` (``realesrgan/utils.py``): ``tile`` / ``tile_pad`` with the
padded tile's output cropped back (no blending), ``half``, and alpha upscaled separately. Alpha goes through the
network as a 3-channel gray image by default (Real-ESRGAN's default ``alpha_upsampler='realesrgan'``); pass
``alpha='bicubic'`` for cv2 bicubic, which is cheaper and never invents detail in a mask.

Tiling and Mamba networks: with a conv net whose receptive-field radius (in LR pixels) is at most ``tile_pad``,
tiled output equals untiled output up to float rounding. A Mamba scan runs over the whole (padded) tile, so every
output pixel depends on every input pixel of its tile and tiled output cannot equal untiled output exactly; the
state decays along the scan, so a generous ``tile_pad`` (32 or more LR pixels) keeps the difference small.
"""
import math
import os
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import yaml
from torch import nn

from datasets_prep.common import IMG_EXTENSIONS
from dvmsr_mma.errors import OptionError
from dvmsr_mma.weights import load_weights


def build_network(opt: Union[str, Mapping, None] = None, arch: Optional[str] = None,
                  scale: Optional[int] = None) -> Tuple[nn.Module, int, Optional[str]]:
    """Network, scale and the option file's ``path.pretrain_network_g`` (or None).

    ``opt``: a BasicSR test/train option file (or its dict): ``network_g`` + ``scale``. ``arch``: any
    ``ARCH_REGISTRY`` name built with its default arguments, plus ``upscale=scale`` when ``scale`` is given.
    """
    import basicsr.archs  # noqa: F401  (BasicSR's own networks, e.g. SRVGGNetCompact)
    import dvmsr_mma  # noqa: F401  (fills the registries)
    from basicsr.utils.registry import ARCH_REGISTRY
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
    try:
        net = cls(**net_opt)
    except TypeError as err:
        raise OptionError(f'{arch}: {err}') from err
    scale = scale or getattr(net, 'upscale', None) or getattr(net, 'scale', None)
    if not scale:
        raise OptionError(f'{arch}: cannot tell the scale; pass --scale')
    return net, int(scale), pretrain


class SRInferencer:
    """Upscale numpy images (OpenCV layout: HxW gray, HxWx3 BGR, HxWx4 BGRA; uint8 or uint16).

    ``model``: an ``nn.Module``, an option file / dict, or a registry name. ``tile`` (LR pixels, 0 = whole
    image) and ``tile_pad`` as Real-ESRGAN: each tile is run with ``tile_pad`` extra pixels of context on every
    side (clipped at the image border) and the matching part of the output is kept. ``half``: True/'fp16' or
    'bf16' runs the network in that dtype (CUDA; bf16 also works on CPU). ``alpha``: 'network' or 'bicubic'.
    """

    def __init__(self, model: Any, scale: Optional[int] = None, weights: Optional[str] = None, tile: int = 0,
                 tile_pad: int = 10, device: Optional[str] = None, half: Union[bool, str] = False,
                 alpha: str = 'network'):
        if isinstance(model, nn.Module):
            net = model
            scale = scale or getattr(model, 'upscale', None)
            if not scale:
                raise OptionError('scale is needed for a bare nn.Module without .upscale')
        elif isinstance(model, str) and not model.endswith(('.yml', '.yaml')) and not os.path.exists(model):
            net, scale, _ = build_network(arch=model, scale=scale)
        else:
            net, scale, pretrain = build_network(opt=model, scale=scale)
            weights = weights or pretrain
        if weights:
            load_weights(net, weights)
        if alpha not in ('network', 'bicubic'):
            raise OptionError(f"alpha must be 'network' or 'bicubic', got {alpha!r}")
        if tile < 0 or tile_pad < 0:
            raise OptionError('tile and tile_pad must be >= 0')
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise OptionError('--device cuda: no CUDA device available')
        self.dtype = {False: torch.float32, None: torch.float32, True: torch.float16, 'fp16': torch.float16,
                      'bf16': torch.bfloat16}[half]
        self.net = net.eval().to(self.device, self.dtype)
        self.scale, self.tile, self.tile_pad, self.alpha = int(scale), int(tile), int(tile_pad), alpha

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) float in [0, 1] on any device -> (1, 3, h*s, w*s) float32 on the CPU, tiled if set."""
        x = x.to(self.device, self.dtype)
        if not self.tile or (x.shape[2] <= self.tile and x.shape[3] <= self.tile):
            return self.net(x).float().cpu()
        return self._run_tiled(x)

    def _run_tiled(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s, t, p = self.scale, self.tile, self.tile_pad
        out = torch.zeros(b, c, h * s, w * s)
        for i in range(math.ceil(h / t)):
            for j in range(math.ceil(w / t)):
                y0, x0 = i * t, j * t
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                py0, px0 = max(y0 - p, 0), max(x0 - p, 0)
                py1, px1 = min(y1 + p, h), min(x1 + p, w)
                sr = self.net(x[:, :, py0:py1, px0:px1]).float().cpu()  # padded tile -> its SR
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = sr[:, :, oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
        return out

    def _rgb(self, bgr: np.ndarray, peak: float) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))).float().div_(peak)[None]
        y = self.run(x)[0].clamp_(0, 1).numpy()  # (3, H, W) RGB
        return y.transpose(1, 2, 0)[:, :, ::-1]  # -> (H, W, 3) BGR

    def enhance(self, img: np.ndarray) -> np.ndarray:
        """Upscale one image; same layout and dtype out as in (uint8 -> uint8, uint16 -> uint16)."""
        import cv2
        if img.dtype == np.uint16:
            peak = 65535.
        elif img.dtype == np.uint8:
            peak = 255.
        else:
            raise OptionError(f'unsupported image dtype {img.dtype} (8- or 16-bit images only)')
        gray = img.ndim == 2 or img.shape[2] == 1
        img2 = img.reshape(img.shape[0], img.shape[1], -1)
        color = np.repeat(img2, 3, axis=2) if gray else img2[:, :, :3]
        out = self._rgb(color, peak)
        if gray:
            out = out.mean(axis=2, keepdims=True)  # the three channels went in equal
        if img2.shape[2] == 4:
            a = img2[:, :, 3]
            if self.alpha == 'network':
                a_out = self._rgb(np.repeat(a[:, :, None], 3, axis=2), peak).mean(axis=2)
            else:
                a_out = cv2.resize(a.astype(np.float32) / peak, (a.shape[1] * self.scale, a.shape[0] * self.scale),
                                   interpolation=cv2.INTER_CUBIC).clip(0, 1)
            out = np.concatenate([out, a_out[:, :, None]], axis=2)
        out = np.rint(out * peak).astype(img.dtype)
        return out[:, :, 0] if img.ndim == 2 else out


def read_image(path: str) -> np.ndarray:
    """cv2 image with its bit depth and alpha kept; OptionError naming the file if it cannot be decoded."""
    import cv2
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise OptionError(f'{path}: not a readable image')
    if img.dtype not in (np.uint8, np.uint16):
        raise OptionError(f'{path}: {img.dtype} pixels; only 8- and 16-bit images are supported')
    return img


def output_path(in_path: str, out_dir: str, scale: int) -> str:
    return os.path.join(out_dir, f'{os.path.splitext(os.path.basename(in_path))[0]}_x{scale}.png')


def list_inputs(path: str):
    """Files to process: the file itself, or every file directly in the folder (non-images included, so they
    are reported rather than silently skipped; hidden files are skipped)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f'-i: no such file or folder: {path}')
    return [os.path.join(path, n) for n in sorted(os.listdir(path))
            if not n.startswith('.') and os.path.isfile(os.path.join(path, n))]


def infer_paths(inferencer: SRInferencer, inputs, out_dir: str, progress: bool = True):
    """Upscale every input file into ``out_dir``; returns (written paths, {input path: error message})."""
    import cv2
    from tqdm import tqdm
    os.makedirs(out_dir, exist_ok=True)
    written, failed = [], {}
    for path in tqdm(inputs, desc='infer', unit='img', disable=not progress):
        try:
            if not path.lower().endswith(IMG_EXTENSIONS):
                raise OptionError(f'{path}: not an image file (extensions: {" ".join(IMG_EXTENSIONS)})')
            out = inferencer.enhance(read_image(path))
            dst = output_path(path, out_dir, inferencer.scale)
            ok, buf = cv2.imencode('.png', out)
            if not ok:
                raise OptionError(f'{path}: could not encode the output PNG')
            buf.tofile(dst)
            written.append(dst)
        except (OptionError, OSError) as err:
            failed[path] = str(err)
    return written, failed
