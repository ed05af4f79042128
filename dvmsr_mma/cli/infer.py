"""``basicsr infer``: upscale an image file or a folder of images with any registered network."""
import argparse
import sys

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.cli.network_args import add_network_arguments, network_source

HELP = 'upscale images: --weights FILE | -opt FILE | --arch TYPE --weights FILE | --onnx FILE, -i IN -o OUTDIR'


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='basicsr infer', description=HELP)
    add_network_arguments(parser, onnx=True)
    parser.add_argument('-i', '--input', required=True, metavar='INPUT', help='image file or folder')
    parser.add_argument('-o', '--output', required=True, metavar='OUTDIR', help='writes <name>_x<s>.png here')
    parser.add_argument('--tile', type=int, default=0, help='tile size in input pixels (0: whole image)')
    parser.add_argument('--tile-pad', type=int, default=10, help='context pixels around each tile (Mamba nets: '
                        'use 32 or more)')
    parser.add_argument('--alpha', choices=['network', 'bicubic'], default='network',
                        help='how the alpha channel is upscaled (a constant alpha is kept as it is)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda when available')
    prec = parser.add_mutually_exclusive_group()
    prec.add_argument('--fp16', action='store_true', help='run the network in float16')
    prec.add_argument('--bf16', action='store_true', help='run the network in bfloat16')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def check(args: argparse.Namespace) -> None:
    args.source = network_source(args)


def run(args: argparse.Namespace) -> int:
    from dvmsr_mma.tools.export import OnnxRunner
    from dvmsr_mma.tools.infer import SRInferencer, infer_paths, list_inputs, prepare_output_dir
    inputs = list_inputs(args.input)
    prepare_output_dir(args.output)  # here, before the weights load and any image runs
    model = OnnxRunner(args.onnx) if args.onnx else args.source
    inferencer = SRInferencer(model, scale=args.scale, weights=args.weights, tile=args.tile,
                              tile_pad=args.tile_pad, device=args.device,
                              half='fp16' if args.fp16 else 'bf16' if args.bf16 else False, alpha=args.alpha)
    written, failed = infer_paths(inferencer, inputs, args.output, progress=not args.quiet)
    for path, msg in failed.items():
        print(f'basicsr infer: failed: {msg}', file=sys.stderr)
    print(f'{len(written)} written to {args.output}, {len(failed)} failed')
    return 1 if failed else 0
