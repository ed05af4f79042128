"""``basicsr lam``: the Local Attribution Map and diffusion index of a network for one window of one HR image."""
import argparse
import json
import os

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.cli.network_args import add_network_arguments, network_source

HELP = 'LAM + diffusion index: --weights FILE | -opt FILE, -i HR_IMAGE --window ROW,COL -o OUTDIR'


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='basicsr lam', description=HELP)
    add_network_arguments(parser)
    parser.add_argument('-i', '--input', required=True, metavar='HR_IMAGE',
                        help='HR image; cropped to a multiple of the scale and downscaled to make the LR input')
    parser.add_argument('--window', required=True, metavar='ROW,COL',
                        help='top-left corner of the window in HR pixels (row, column)')
    parser.add_argument('--window-size', type=int, default=16, help='window side in HR pixels')
    parser.add_argument('--fold', type=int, default=50, help='path steps')
    parser.add_argument('--sigma', type=float, default=1.2, help='blur of the path\'s baseline')
    parser.add_argument('--kernel-size', type=int, default=9, help='blur kernel side, odd')
    parser.add_argument('--alpha', type=float, default=0.5, help='weight of the LR image in the picture')
    parser.add_argument('--lr', choices=['pil', 'matlab'], default='pil',
                        help='LR from PIL bicubic (LAM_Demo, default) or BasicSR\'s MATLAB bicubic')
    parser.add_argument('--batch', type=int, default=10, help='path steps per forward/backward (memory bound)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda when available')
    parser.add_argument('-o', '--output', required=True, metavar='OUTDIR',
                        help='writes <name>_lam.png, <name>_sr.png, <name>_lam.json here')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def check(args: argparse.Namespace) -> None:
    args.source = network_source(args, weights_needed=False)  # dvmsr_mma.tools.lam.load_network names what is missing


def run(args: argparse.Namespace) -> int:
    import cv2
    import torch

    from dvmsr_mma.tools.infer import prepare_output_dir
    from dvmsr_mma.tools.lam import (
        attribution_of_image,
        check_alpha,
        load_network,
        parse_window,
        read_hr,
        render_map,
        settings,
        sr_image,
    )
    from dvmsr_mma.utils.errors import OptionError
    window = parse_window(args.window)
    check_alpha(args.alpha)
    hr = read_hr(args.input)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cuda' and not torch.cuda.is_available():
        raise OptionError('--device cuda: no CUDA device available')
    prepare_output_dir(args.output)
    net, scale = load_network(args.source, scale=args.scale, weights=args.weights)
    result, lr = attribution_of_image(net, scale, hr, window, window_size=args.window_size, fold=args.fold,
                                      sigma=args.sigma, kernel_size=args.kernel_size, lr_mode=args.lr,
                                      batch=args.batch, device=device, progress=not args.quiet)
    picture = render_map(result.attribution, lr, scale, window, args.window_size, alpha=args.alpha)
    name = os.path.splitext(os.path.basename(args.input))[0]
    paths = {kind: os.path.join(args.output, f'{name}_{kind}.png') for kind in ('lam', 'sr')}
    for kind, rgb in (('lam', picture), ('sr', sr_image(result.sr))):
        ok, buf = cv2.imencode('.png', rgb[:, :, ::-1])
        if not ok:
            raise OptionError(f'could not encode {paths[kind]}')
        buf.tofile(paths[kind])
    record = {'image': args.input, 'network': args.arch or args.opt or type(net).__name__, 'weights': args.weights,
              'scale': scale,
              'di': round(result.di, 4), **settings(window, args.window_size, args.fold, args.sigma,
                                                    args.kernel_size, args.lr),
              'hr_size': [lr.shape[0] * scale, lr.shape[1] * scale], 'lr_size': list(lr.shape[:2]), 'device': device}
    line = json.dumps(record)
    with open(os.path.join(args.output, f'{name}_lam.json'), 'w', encoding='utf-8') as f:
        f.write(line + '\n')
    print(line)
    print(f'DI {result.di:.2f} ({name}, window {window[0]},{window[1]}); wrote {paths["lam"]}, {paths["sr"]}')
    return 0
