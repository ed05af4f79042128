"""``basicsr demo``: the embedded default job (tiny data from scikit-image samples, CPU, minutes)."""
from typing import List

from dvmsr_mma.cli import OneLineParser

HELP = 'build tiny LMDBs from bundled sample images, train a small DVMSR on CPU, report PSNR vs bicubic'


def main(argv: List[str]) -> int:
    parser = OneLineParser(prog='basicsr demo', description=HELP)
    parser.add_argument('--workdir', default='demo_output', help='where data, experiments/ and results/ go')
    parser.add_argument('--iters', type=int, default=1000, help='training iterations')
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error(f'--iters must be positive, got {args.iters}')
    from dvmsr_mma.demo import run
    return run(args.workdir, args.iters)
