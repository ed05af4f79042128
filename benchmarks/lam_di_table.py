"""Diffusion-index table: a network (the released DVMSR by default) next to a bicubic-initialised conv baseline.

Run: python benchmarks/lam_di_table.py --weights experiments/pretrained_models/DVMSR.pth IMG[@ROW,COL] ...
     [--arch DVMSR --scale 4 | -opt FILE] [--fold 50] [--batch 10] [--device cpu|cuda] [-o OUTDIR]

Each IMG is an HR image (e.g. from Set5/Set14); ``@ROW,COL`` is the window's top-left corner in HR pixels (default:
the centred window). LAM settings are the demo's (window 16, sigma 1.2, kernel 9, PIL bicubic LR). The baseline is
one grouped 5x5 conv + PixelShuffle whose weights are the bicubic kernel (Keys, a = -0.5, as PIL and MATLAB), so
it reproduces bicubic upscaling (up to borders): its DI is what 4 x 4 interpolation taps give. Prints a Markdown
table; with ``-o`` the maps are written as ``<image>_<network>_lam.png``.
"""
import argparse
import os
import sys

import cv2
import numpy as np
import torch
from torch import nn

import dvmsr_mma  # noqa: F401  (registers the archs)
from dvmsr_mma.tools.lam import attribution_of_image, load_network, parse_window, read_hr, render_map
from dvmsr_mma.utils.errors import OptionError


def cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5: PIL's and MATLAB's bicubic)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                    np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0.0))


class BicubicConv(nn.Module):
    """x``scale`` bicubic upscaling as a network: output pixel (s*y + i, s*x + j) is a 5 x 5 weighted sum of the LR
    pixels around (y, x) (half-pixel centres, as PIL / ``align_corners=False``), replicate padding at the border."""

    def __init__(self, scale: int):
        super().__init__()
        self.upscale = scale
        offsets = np.arange(-2, 3)
        phases = (np.arange(scale) + 0.5) / scale - 0.5  # LR position of each output phase relative to its pixel
        taps = cubic(phases[:, None] - offsets[None, :])  # (s, 5): weight of LR offset d for phase i
        weight = np.einsum('ik,jl->ijkl', taps, taps).reshape(scale * scale, 1, 5, 5)
        self.conv = nn.Conv2d(3, 3 * scale * scale, 5, padding=2, padding_mode='replicate', groups=3, bias=False)
        self.conv.weight.data.copy_(torch.from_numpy(np.tile(weight, (3, 1, 1, 1))).float())
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))  # (b, 3 s^2, h, w) -> (b, 3, s h, s w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('images', nargs='+', metavar='IMG[@ROW,COL]')
    src = parser.add_mutually_exclusive_group()
    src.add_argument('-opt', metavar='FILE', help='BasicSR option file instead of --arch')
    src.add_argument('--arch', default='DVMSR', help='ARCH_REGISTRY name (default DVMSR)')
    parser.add_argument('--weights', metavar='FILE', help='checkpoint (needed with --arch)')
    parser.add_argument('--scale', type=int, help='default: 4 with --arch, the option file\'s with -opt')
    parser.add_argument('--window-size', type=int, default=16)
    parser.add_argument('--fold', type=int, default=50)
    parser.add_argument('--batch', type=int, default=10)
    parser.add_argument('--device', choices=['cpu', 'cuda'])
    parser.add_argument('-o', '--output', metavar='OUTDIR', help='also write the maps here')
    args = parser.parse_args()

    scale = args.scale or (None if args.opt else 4)
    net, scale = load_network(args.opt or args.arch, scale=scale, weights=args.weights)
    name = os.path.splitext(os.path.basename(args.opt))[0] if args.opt else args.arch
    networks = {name: net, 'bicubic conv': BicubicConv(scale)}
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    rows = []
    for spec in args.images:
        path, _, at = spec.partition('@')
        hr = read_hr(path)
        h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
        window = parse_window(at) if at else ((h - 1 - args.window_size) // 2, (w - 1 - args.window_size) // 2)
        dis = []
        for label, network in networks.items():
            result, lr = attribution_of_image(network, scale, hr, window, window_size=args.window_size,
                                              fold=args.fold, batch=args.batch, device=device, progress=True)
            dis.append(result.di)
            if args.output:
                picture = render_map(result.attribution, lr, scale, window, args.window_size)
                stem = f'{os.path.splitext(os.path.basename(path))[0]}_{label.replace(" ", "_")}_lam.png'
                cv2.imwrite(os.path.join(args.output, stem), picture[:, :, ::-1])
        rows.append((os.path.basename(path), window, dis))
    print(f'\n| image | window (row,col) | {" | ".join(f"{n} DI" for n in networks)} |')
    print(f'|---|---|{"---|" * len(networks)}')
    for image, window, dis in rows:
        print(f'| {image} | {window[0]},{window[1]} | {" | ".join(f"{d:.2f}" for d in dis)} |')
    means = np.mean([dis for _, _, dis in rows], axis=0)
    print(f'| mean | | {" | ".join(f"{d:.2f}" for d in means)} |')


if __name__ == '__main__':
    try:
        main()
    except (OptionError, FileNotFoundError) as err:
        sys.exit(f'lam_di_table: error: {err}')
