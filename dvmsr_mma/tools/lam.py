"""Local Attribution Maps (LAM; Gu & Dong, CVPR 2021) and the diffusion index, for any SR network.

LAM asks which input pixels an SR network uses to reconstruct one window of its output. The target is the sum of
gradient magnitudes of the output inside the window; the input is walked along a path from a Gaussian-blurred
copy of the LR image (the baseline) to the LR image itself, and the gradients of the target along the path, each
times the path's derivative, are averaged (path-integrated gradients). The map is the absolute channel sum,
divided by its maximum. The diffusion index DI = (1 - Gini(map)) x 100 says how spread out the map is.

Every convention follows the official demo (``X-Lowlevel-Vision/LAM_Demo``), so that DI figures are comparable
with the literature; each function's docstring names the part of the demo it matches. All of it is written here
from those conventions: the demo itself is not a dependency.
"""
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from torch import nn

from dvmsr_mma.utils.errors import OptionError

GINI_EPS = 1e-7  # the demo's gini() adds this to every value ("values cannot be 0")
SIGMA_EPS = 1e-5  # the demo's isotropic_gaussian_kernel() adds this to sigma (sigma 0 is then a delta)
LR_MODES = {'pil': 'PIL bicubic (LAM_Demo)', 'matlab': 'MATLAB bicubic (basicsr.utils.matlab_functions.imresize)'}
# matplotlib's 'seismic' colour map (LinearSegmentedColormap.from_list over these 5 colours, 256 entries), which
# the demo's vis_saliency() uses; rebuilt here so that drawing needs no matplotlib
_SEISMIC = ((0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0))


@dataclass
class LAMResult:
    """What :func:`local_attribution_map` computes.

    ``gradient``: (3, h, w) path-integrated gradient (LR pixels); ``attribution``: (h, w) map, |channel sum| / max,
    in [0, 1]; ``di``: the diffusion index; ``sr``: (3, h*s, w*s) network output for the LR image itself (the
    path's last step), RGB float32, unclamped."""
    gradient: np.ndarray
    attribution: np.ndarray
    di: float
    sr: np.ndarray


def gini(values: np.ndarray) -> float:
    """The Gini index as the demo's ``SaliencyModel/utils.py:gini`` computes it: flatten, shift by the minimum if
    any value is negative, add 1e-7 to every value, sort ascending, then
    G = sum_i (2i - n - 1) x_i / (n sum_i x_i) with i = 1..n (the statsdirect formula the demo cites).
    Computed in float64 (the demo works in the map's float32; the difference is far below 0.01 DI)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError('gini of an empty array')
    if x[0] < 0:
        x = x - x[0]
    x = x + GINI_EPS
    n = x.size
    index = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2 * index - n - 1) * x) / (n * np.sum(x)))


def diffusion_index(attribution: np.ndarray) -> float:
    """DI = (1 - Gini(map)) x 100, as the demo notebook computes it from the normalised map: near 100 when every
    pixel contributes equally, near 100 / n_pixels when one pixel does all the work."""
    return (1.0 - gini(attribution)) * 100.0


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """(size, size) isotropic Gaussian, normalised to sum 1, as the demo's ``isotropic_gaussian_kernel``:
    offsets -(size // 2) .. size // 2 and sigma + 1e-5, so that sigma 0 gives an exact delta. ``size`` must be
    odd (the demo's offsets for an even size are off-centre)."""
    if size < 1 or size % 2 == 0:
        raise OptionError(f'--kernel-size must be an odd number >= 1, got {size}')
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    kernel = np.exp(-(xx ** 2 + yy ** 2) / (2.0 * (sigma + SIGMA_EPS) ** 2))
    return kernel / kernel.sum()


def path_kernels(sigma: float, fold: int, size: int) -> np.ndarray:
    """(fold + 1, size, size) blur kernels of the path, sigma falling linearly from ``sigma`` (step 0, the
    baseline) to 0 (step ``fold``, the image itself), as the demo's ``GaussianBlurPath``."""
    if fold < 1:
        raise OptionError(f'--fold must be >= 1, got {fold}')
    if sigma < 0:
        raise OptionError(f'--sigma must be >= 0, got {sigma}')
    return np.stack([gaussian_kernel(size, s) for s in np.linspace(sigma, 0.0, fold + 1)])


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(c, h, w) float32 image filtered with ``kernel`` by ``cv2.filter2D`` (border reflect-101), channel by
    channel, as the demo filters its (h, w, c) image; float32 out."""
    hwc = np.ascontiguousarray(np.moveaxis(image.astype(np.float32, copy=False), 0, 2))
    out = cv2.filter2D(hwc, -1, kernel)
    return np.moveaxis(out.reshape(hwc.shape), 2, 0)


def blur_path(image: np.ndarray, kernels: np.ndarray, steps: Iterable[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Path points and path derivatives at ``steps`` (each in 1..fold, fold = len(kernels) - 1):
    image_j = blur(image, k_j) and d image / d alpha at j = blur(image, (k_j - k_(j-1)) x fold), as the demo's
    ``GaussianBlurPath`` (which takes the fold points j = 1..fold; step 0, the baseline, gets no gradient).
    Returns two (len(steps), c, h, w) float32 arrays."""
    fold = len(kernels) - 1
    steps = list(steps)
    if any(not 1 <= j <= fold for j in steps):
        raise ValueError(f'path steps must lie in 1..{fold}, got {steps}')
    images = np.stack([blur(image, kernels[j]) for j in steps])
    derivatives = np.stack([blur(image, (kernels[j] - kernels[j - 1]) * fold) for j in steps])
    return images, derivatives


def window_gradient_sum(sr: torch.Tensor, row: int, col: int, size: int) -> torch.Tensor:
    """LAM's target, the demo's ``attr_grad`` with ``reduce='sum'``: sqrt((I[y, x] - I[y+1, x])^2 +
    (I[y, x] - I[y, x+1])^2) summed over the ``size`` x ``size`` window with top-left (row, col), the channels
    and the batch (samples are independent, so each sample's input gradient is its own). Only the window plus one
    row and column is cut out first; the values are those of the full gradient map."""
    crop = sr[:, :, row:row + size + 1, col:col + size + 1]  # (b, c, size+1, size+1)
    dy = crop[:, :, :-1, :-1] - crop[:, :, 1:, :-1]
    dx = crop[:, :, :-1, :-1] - crop[:, :, :-1, 1:]
    return torch.sqrt(dy ** 2 + dx ** 2).sum()


def check_window(window: Tuple[int, int], size: int, hr_size: Tuple[int, int]) -> None:
    """The window must lie inside the output's gradient map, which is one pixel smaller than the (cropped) HR
    image in each direction (the demo would silently shrink a window that does not)."""
    (row, col), (h, w) = window, hr_size
    if size < 1:
        raise OptionError(f'--window-size must be >= 1, got {size}')
    if size > h - 1 or size > w - 1:
        raise OptionError(f'--window-size {size} is larger than the image: the HR image (cropped to the scale) is '
                          f'{h}x{w} (rows x columns), its gradient map {h - 1}x{w - 1}; use a smaller --window-size')
    if not (0 <= row <= h - 1 - size and 0 <= col <= w - 1 - size):
        raise OptionError(f'--window {row},{col}: the {size}x{size} window is outside the {h}x{w} HR image; its '
                          f'top-left corner (row,column) must lie in 0..{h - 1 - size},0..{w - 1 - size}')


def local_attribution_map(net: nn.Module, lr: np.ndarray, window: Tuple[int, int], scale: int,
                          window_size: int = 16, fold: int = 50, sigma: float = 1.2, kernel_size: int = 9,
                          batch: int = 10, device: Union[str, torch.device, None] = None,
                          progress: bool = False) -> LAMResult:
    """LAM of ``net`` for the ``window_size`` window at ``window`` = (row, column) of its output, in HR pixels.

    ``lr``: (3, h, w) RGB float in [0, 1]. The path has ``fold`` gradient steps (sigma ``sigma`` -> 0, kernel
    ``kernel_size``), run ``batch`` steps per forward/backward; ``device``: default the network's (the network is
    moved there). The window is checked before any step runs. As the demo's
    ``Path_gradient`` + ``saliency_map_PG`` + ``grad_abs_norm``: each step's input gradient has its NaNs set to 0
    (the target's sqrt has an infinite slope at 0), is multiplied by the path derivative and the products are
    averaged over the steps; the map is |channel sum| / max. The network runs in eval mode (its mode is restored
    afterwards); only the input gradient is computed, so the parameters' ``.grad`` stay untouched."""
    from tqdm import tqdm
    lr = np.asarray(lr, dtype=np.float32)
    if lr.ndim != 3 or lr.shape[0] != 3:
        raise OptionError(f'the LR image must be (3, h, w) RGB, got shape {tuple(lr.shape)}')
    if batch < 1:
        raise OptionError(f'--batch must be >= 1, got {batch}')
    check_window(window, window_size, (lr.shape[1] * scale, lr.shape[2] * scale))
    kernels = path_kernels(sigma, fold, kernel_size)
    param = next(iter(net.parameters()), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else torch.device('cpu'))
    was_training = net.training
    net.eval().to(dev)
    total = np.zeros(lr.shape, dtype=np.float64)
    sr = None
    try:
        with tqdm(total=fold, desc='lam', unit='step', disable=not progress) as bar:
            for start in range(1, fold + 1, batch):
                steps = range(start, min(start + batch, fold + 1))
                images, derivatives = blur_path(lr, kernels, steps)
                x = torch.from_numpy(images).to(dev).requires_grad_(True)
                out = net(x)
                expected = (len(steps), 3, lr.shape[1] * scale, lr.shape[2] * scale)
                if tuple(out.shape) != expected:
                    raise OptionError(f'{type(net).__name__} gave a {tuple(out.shape)} output for a '
                                      f'{tuple(x.shape)} input; scale {scale} needs {expected}')
                grad, = torch.autograd.grad(window_gradient_sum(out, window[0], window[1], window_size), x)
                grad = grad.detach().cpu().double()
                grad = torch.where(torch.isnan(grad), torch.zeros_like(grad), grad)
                total += (grad * torch.from_numpy(derivatives).double()).sum(0).numpy()
                if steps[-1] == fold:
                    sr = out[-1].detach().float().cpu().numpy()
                bar.update(len(steps))
    except RuntimeError as err:
        from dvmsr_mma.tools.infer import is_out_of_memory
        if not is_out_of_memory(err):
            raise
        fix = f'pass a smaller --batch (e.g. --batch {max(1, batch // 2)})' if batch > 1 else 'use a smaller image'
        raise OptionError(f'out of memory on {dev} running {min(batch, fold)} path steps at once on a '
                          f'{lr.shape[1]}x{lr.shape[2]} LR image; {fix}') from None
    finally:
        net.train(was_training)
    gradient = (total / fold).astype(np.float32)
    channel_sum = np.abs(gradient.sum(axis=0))
    peak = float(channel_sum.max())
    if not np.isfinite(peak) or peak <= 0:
        raise OptionError(f'the attribution of window {window[0]},{window[1]} is {"zero" if peak == 0 else peak} '
                          'everywhere (a flat output there, or a network that ignores its input); choose another '
                          '--window')
    attribution = channel_sum / peak
    return LAMResult(gradient=gradient, attribution=attribution, di=diffusion_index(attribution), sr=sr)


def read_hr(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, read with PIL as the demo (``prepare_images``) reads it; gray, palette or RGBA images
    are converted to RGB (alpha dropped; the demo keeps the first 3 channels, the same for an opaque image)."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(path):
        raise FileNotFoundError(f'-i: no such image file: {path}')
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert('RGB'))
    except Image.DecompressionBombError as err:  # past Pillow's pixel cap (2 x Image.MAX_IMAGE_PIXELS)
        raise OptionError(f'-i: {path}: past Pillow\'s decoder cap of {2 * Image.MAX_IMAGE_PIXELS:,} pixels '
                          f'({err}); crop the region to analyse') from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise OptionError(f'-i: {path}: not a readable image ({err})') from err


def prepare_images(hr: np.ndarray, scale: int, lr_mode: str = 'pil') -> Tuple[np.ndarray, np.ndarray]:
    """(cropped HR, LR), both (h, w, 3) uint8 RGB. As the demo's ``prepare_images``: the HR image is cropped at
    the bottom/right to a multiple of ``scale`` and downscaled by PIL's bicubic (``lr_mode='pil'``); or
    (``'matlab'``) by BasicSR's MATLAB-compatible ``imresize``, rounded to uint8 as ``basicsr prep make_lr``
    writes LR images (the benchmarks' LR_bicubic convention)."""
    from PIL import Image
    if lr_mode not in LR_MODES:
        raise OptionError(f'--lr must be one of {", ".join(LR_MODES)}, got {lr_mode!r}')
    h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
    if h < scale or w < scale:
        raise OptionError(f'-i: the image is {hr.shape[0]}x{hr.shape[1]}, smaller than the scale {scale}')
    hr = np.ascontiguousarray(hr[:h, :w])
    if lr_mode == 'pil':
        lr = np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))
    else:
        from datasets_prep.make_lr import bicubic_downscale
        lr = bicubic_downscale(hr, scale)
    return hr, lr


def to_chw_float(img: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, h, w) float32 in [0, 1], as torchvision's ``to_tensor`` (the demo's ``PIL2Tensor``)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def seismic_colors(values: np.ndarray) -> np.ndarray:
    """matplotlib's ``get_cmap('seismic')(values)`` (256-entry table, a value v in [0, 1] takes entry
    min(int(v * 256), 255)) as uint8 RGB truncated like the demo's ``(255 * cmap(...)).astype(np.uint8)``."""
    anchors = np.linspace(0.0, 1.0, len(_SEISMIC))
    grid = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(grid, anchors, [c[i] for c in _SEISMIC]) for i in range(3)], axis=1)
    index = np.clip((np.asarray(values, dtype=np.float64) * 256).astype(np.int64), 0, 255)
    return (255 * table[index]).astype(np.uint8)


def check_alpha(alpha: float) -> None:
    """The picture's blend weight of the LR image must lie in [0, 1] (checked before the run, not after it)."""
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f'--alpha must lie in [0, 1], got {alpha}')


def render_map(attribution: np.ndarray, lr: np.ndarray, scale: int, window: Tuple[int, int], window_size: int,
               alpha: float = 0.5) -> np.ndarray:
    """The picture: (H, W, 3) uint8 RGB. As the demo's ``vis_saliency`` + blend: the map through 'seismic'
    (value 0.5 + map / 2: white for no attribution, dark red for the most), enlarged ``scale`` x by nearest
    neighbour, mixed as heat x (1 - alpha) + (LR enlarged by PIL bicubic) x alpha, truncated to uint8; the
    window drawn on it as the demo marks it (red, 2 px)."""
    from PIL import Image
    check_alpha(alpha)
    heat = seismic_colors(attribution * 0.5 + 0.5).repeat(scale, axis=0).repeat(scale, axis=1)
    up = np.asarray(Image.fromarray(lr).resize((heat.shape[1], heat.shape[0]), Image.BICUBIC), dtype=np.float64)
    picture = np.ascontiguousarray((heat * (1.0 - alpha) + up * alpha).astype(np.uint8))
    row, col = window
    cv2.rectangle(picture, (col, row), (col + window_size, row + window_size), (255, 0, 0), 2)
    return picture


def sr_image(sr: np.ndarray) -> np.ndarray:
    """(3, H, W) float output -> (H, W, 3) uint8 RGB, clamped to [0, 1] and rounded."""
    return np.rint(np.clip(sr, 0.0, 1.0).transpose(1, 2, 0) * 255.0).astype(np.uint8)


def load_network(model: Any, scale: Optional[int] = None, weights: Optional[str] = None) -> Tuple[nn.Module, int]:
    """(network with its weights, scale) from an option file / dict, an ``ARCH_REGISTRY`` name or (None) the weights
    of a DVMSR or MMA network alone, built as ``basicsr infer`` and ``bench`` build it
    (:func:`dvmsr_mma.tools.infer.load_network`, loaded strictly). Weights
    are required: the option file's ``path.pretrain_network_g`` or ``weights``; a map of random weights says
    nothing about a network (the Python API takes any ``nn.Module``, random ones included)."""
    from dvmsr_mma.tools.infer import build_network
    from dvmsr_mma.tools.infer import load_network as load_with_weights
    from dvmsr_mma.tools.weights import load_weights
    is_opt = model is not None and (not isinstance(model, str) or model.endswith(('.yml', '.yaml')))
    if not is_opt and not weights:
        raise OptionError('--arch needs --weights FILE' if model else 'give --weights FILE or -opt FILE')
    if not is_opt:  # a DVMSR or MMA checkpoint describes itself; --arch, if given, must agree
        return load_with_weights(model, scale, weights)
    net, scale, pretrain = build_network(opt=model, scale=scale)
    weights = weights or pretrain
    if not weights:
        raise OptionError(f'-opt: {model if isinstance(model, str) else "the options"} set no '
                          'path.pretrain_network_g; pass --weights FILE')
    load_weights(net, weights)
    return net, scale


def settings(window: Tuple[int, int], window_size: int, fold: int, sigma: float, kernel_size: int,
             lr_mode: str) -> Dict[str, Any]:
    """The settings a DI depends on, as recorded next to it."""
    return {'window': list(window), 'window_size': window_size, 'fold': fold, 'sigma': sigma,
            'kernel_size': kernel_size, 'lr': LR_MODES[lr_mode]}


def attribution_of_image(net: nn.Module, scale: int, hr: np.ndarray, window: Tuple[int, int],
                         window_size: int = 16, fold: int = 50, sigma: float = 1.2, kernel_size: int = 9,
                         lr_mode: str = 'pil', batch: int = 10, device: Union[str, torch.device, None] = None,
                         progress: bool = False) -> Tuple[LAMResult, np.ndarray]:
    """LAM for an HR image ((H, W, 3) uint8 RGB, e.g. from :func:`read_hr`), its LR made as the demo makes it
    (:func:`prepare_images`); returns the result and the LR image ((h, w, 3) uint8 RGB, for :func:`render_map`)."""
    _, lr = prepare_images(hr, scale, lr_mode)
    result = local_attribution_map(net, to_chw_float(lr), window, scale, window_size=window_size, fold=fold,
                                   sigma=sigma, kernel_size=kernel_size, batch=batch, device=device,
                                   progress=progress)
    return result, lr


def parse_window(text: str) -> Tuple[int, int]:
    """'ROW,COL' -> (row, col); OptionError naming the option otherwise."""
    parts = text.replace(' ', '').split(',')
    try:
        row, col = (int(p) for p in parts)
    except ValueError:
        raise OptionError(f"--window: expected ROW,COL (the window's top-left corner in HR pixels, e.g. 150,110), "
                          f'got {text!r}') from None
    return row, col
