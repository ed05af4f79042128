"""``basicsr bench``: parameters, FLOPs (selective scan counted), runtime and memory of a network."""
import json
from typing import List

from dvmsr_mma.cli import OneLineParser

HELP = 'params, FLOPs (scan included), runtime, memory: -opt FILE | --arch TYPE [--size HxW] [--json]'


def main(argv: List[str]) -> int:
    parser = OneLineParser(prog='basicsr bench', description=HELP)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('-opt', metavar='FILE', help='BasicSR option file (network_g, scale)')
    src.add_argument('--arch', metavar='TYPE', help='ARCH_REGISTRY name, built with its default arguments')
    parser.add_argument('--scale', type=int, help='upscale factor (passed as the network\'s upscale)')
    parser.add_argument('--size', default='256x256', help='LR input size HxW (default 256x256)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda when available')
    parser.add_argument('--runs', type=int, default=10, help='timed warm runs (median reported)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs first')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    parser.add_argument('--weights', metavar='FILE', help='weights for --psnr-on')
    parser.add_argument('--psnr-on', metavar='DIR', help='folder with HR/ and LR_bicubic/X<s>/: mean Y-PSNR')
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    args = parser.parse_args(argv)

    from dvmsr_mma.bench import benchmark, format_table, parse_size
    from dvmsr_mma.errors import OptionError
    if args.runs < 1 or args.warmup < 0:
        raise OptionError('--runs must be >= 1 and --warmup >= 0')
    result = benchmark(args.opt or args.arch, scale=args.scale, size=parse_size(args.size), device=args.device,
                       runs=args.runs, warmup=args.warmup, flops=not args.no_flops, psnr_dir=args.psnr_on,
                       weights=args.weights)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
