"""``basicsr train -opt FILE``: BasicSR's ``train_pipeline``, flags and ``--force_yml`` syntax unchanged."""
from typing import List

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.cli.pipeline import add_basicsr_flags, check_option_file, run_pipeline

HELP = 'train a network with BasicSR\'s train pipeline (-opt FILE [--auto_resume] [--debug] ...)'


def main(argv: List[str]) -> int:
    parser = OneLineParser(prog='basicsr train', description=HELP)
    add_basicsr_flags(parser, train=True)
    args = parser.parse_args(argv)
    check_option_file(args.opt)
    from basicsr.train import train_pipeline
    return run_pipeline(train_pipeline, 'basicsr train', argv)
