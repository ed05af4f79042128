"""``basicsr bench``: parameters, FLOPs (selective scan counted), runtime and memory of a network."""
import argparse
import json

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.cli.network_args import add_network_arguments, network_source
from dvmsr_mma.utils.errors import OptionError

HELP = 'params, FLOPs (scan included), runtime, memory: -opt FILE | --arch TYPE | --weights FILE [--size HxW]'


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='basicsr bench', description=HELP)
    add_network_arguments(parser)
    parser.add_argument('--size', default='256x256', help='LR input size HxW')
    parser.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda when available')
    parser.add_argument('--runs', type=int, default=10, help='timed warm runs (median reported)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs first')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    parser.add_argument('--psnr-on', metavar='DIR', help='folder with HR/ and LR_bicubic/X<s>/: mean Y-PSNR')
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    return parser


def check(args: argparse.Namespace) -> None:
    args.source = network_source(args, weights_needed=False)  # bench times random weights too
    if args.runs < 1 or args.warmup < 0:
        raise OptionError('--runs must be >= 1 and --warmup >= 0')


def run(args: argparse.Namespace) -> int:
    from dvmsr_mma.tools.bench import benchmark, format_table, parse_size
    result = benchmark(args.source, scale=args.scale, size=parse_size(args.size), device=args.device,
                       runs=args.runs, warmup=args.warmup, flops=not args.no_flops, psnr_dir=args.psnr_on,
                       weights=args.weights)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
