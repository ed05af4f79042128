"""``basicsr demo``: the embedded default job (tiny data from scikit-image samples, CPU, minutes)."""
import argparse

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.utils.errors import OptionError

HELP = 'build tiny LMDBs from bundled sample images, train a small DVMSR on CPU, report PSNR vs bicubic'


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='basicsr demo', description=HELP)
    parser.add_argument('--workdir', default='demo_output', help='where data, experiments/ and results/ go')
    parser.add_argument('--iters', type=int, default=1000, help='training iterations')
    return parser


def check(args: argparse.Namespace) -> None:
    if args.iters < 1:
        raise OptionError(f'--iters must be positive, got {args.iters}')


def run(args: argparse.Namespace) -> int:
    from dvmsr_mma.demo import run as run_demo
    return run_demo(args.workdir, args.iters)
