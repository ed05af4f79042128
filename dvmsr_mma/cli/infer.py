"""``basicsr infer``: upscale an image file or a folder of images with any registered network."""
import os
import sys
from typing import List, Optional

import yaml

from dvmsr_mma.cli import OneLineParser

HELP = 'upscale images: -opt FILE | --arch TYPE --weights FILE | --onnx FILE, -i INPUT -o OUTDIR [--tile N]'


def require_weights(opt: Optional[str], arch: Optional[str], weights: Optional[str]) -> None:
    """One line, before anything is built, when the network would run with random weights."""
    from dvmsr_mma.errors import OptionError
    if arch and not weights:
        raise OptionError('--arch needs --weights FILE')
    if opt and not weights and os.path.isfile(opt):
        with open(opt, encoding='utf-8') as f:
            opt_dict = yaml.safe_load(f)
        if not isinstance(opt_dict, dict) or not (opt_dict.get('path') or {}).get('pretrain_network_g'):
            raise OptionError(f'-opt: {opt} sets no path.pretrain_network_g; pass --weights FILE')


def main(argv: List[str]) -> int:
    parser = OneLineParser(prog='basicsr infer', description=HELP)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('-opt', metavar='FILE', help='BasicSR option file (network_g, scale, path.pretrain_network_g)')
    src.add_argument('--arch', metavar='TYPE', help='ARCH_REGISTRY name, built with its default arguments')
    src.add_argument('--onnx', metavar='FILE', help='a model written by basicsr export (onnxruntime, CPU); a '
                     'fixed-size one is fed tiles of its size')
    parser.add_argument('--weights', metavar='FILE', help='.pth (BasicSR params_ema/params) or .safetensors; '
                        'overrides the option file\'s pretrain_network_g')
    parser.add_argument('--scale', type=int, help='upscale factor (passed as the network\'s upscale)')
    parser.add_argument('-i', '--input', required=True, metavar='INPUT', help='image file or folder')
    parser.add_argument('-o', '--output', required=True, metavar='OUTDIR', help='writes <name>_x<s>.png here')
    parser.add_argument('--tile', type=int, default=0, help='tile size in input pixels (0: whole image)')
    parser.add_argument('--tile-pad', type=int, default=10, help='context pixels around each tile (Mamba nets: '
                        'use 32 or more)')
    parser.add_argument('--alpha', choices=['network', 'bicubic'], default='network',
                        help='how the alpha channel is upscaled')
    parser.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda when available')
    prec = parser.add_mutually_exclusive_group()
    prec.add_argument('--fp16', action='store_true', help='run the network in float16')
    prec.add_argument('--bf16', action='store_true', help='run the network in bfloat16')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)

    from dvmsr_mma.export import OnnxRunner
    from dvmsr_mma.infer import SRInferencer, infer_paths, list_inputs, prepare_output_dir
    require_weights(args.opt, args.arch, args.weights)
    inputs = list_inputs(args.input)
    prepare_output_dir(args.output)  # here, before the weights load and any image runs
    model = OnnxRunner(args.onnx) if args.onnx else args.opt or args.arch
    inferencer = SRInferencer(model, scale=args.scale, weights=args.weights, tile=args.tile,
                              tile_pad=args.tile_pad, device=args.device,
                              half='fp16' if args.fp16 else 'bf16' if args.bf16 else False, alpha=args.alpha)
    written, failed = infer_paths(inferencer, inputs, args.output, progress=not args.quiet)
    for path, msg in failed.items():
        print(f'basicsr infer: failed: {msg}', file=sys.stderr)
    print(f'{len(written)} written to {args.output}, {len(failed)} failed')
    return 1 if failed else 0
