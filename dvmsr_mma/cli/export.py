"""``basicsr export``: write a network with its weights as ONNX, checked in onnxruntime against PyTorch."""
import argparse
import sys

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.cli.network_args import add_network_arguments, network_source

HELP = 'ONNX export, checked in onnxruntime: --weights FILE | -opt FILE, --onnx OUT.onnx [--dynamic | --size HxW]'


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='basicsr export', description=HELP)
    add_network_arguments(parser)
    parser.add_argument('--onnx', required=True, metavar='OUT.onnx', help='the file to write (replaced atomically)')
    parser.add_argument('--size', default='64x64', help='LR input size HxW of the graph (default 64x64: the tile '
                        'basicsr infer --onnx feeds it); with --dynamic, the size it is traced and checked at')
    parser.add_argument('--dynamic', action='store_true', help='symbolic height and width: one graph for every '
                        'input size (DVMSR and MMA: a scan whose graph does not depend on the length)')
    parser.add_argument('--opset', type=int, help='ONNX opset (default: torch\'s)')
    parser.add_argument('--fp16', action='store_true', help='a float16 graph (float16 input and output)')
    parser.add_argument('--no-check', action='store_true', help='skip the onnxruntime check')
    return parser


def check(args: argparse.Namespace) -> None:
    args.source = network_source(args)


def run(args: argparse.Namespace) -> int:
    from dvmsr_mma.tools.bench import parse_size
    from dvmsr_mma.tools.export import ExportCheckFailed, export_onnx, require
    from dvmsr_mma.tools.infer import load_network
    size = parse_size(args.size)
    for module in ('onnx', 'onnxscript') if args.no_check else ('onnx', 'onnxscript', 'onnxruntime'):
        require(module)  # before the network is built
    net, scale = load_network(args.source, args.scale, args.weights)
    try:
        result = export_onnx(net, args.onnx, scale, size=size, opset=args.opset, fp16=args.fp16,
                             dynamic=args.dynamic, check=not args.no_check)
    except ExportCheckFailed as err:
        print(f'basicsr export: failed: {err}', file=sys.stderr)
        return 1
    print(result.summary())
    return 0
