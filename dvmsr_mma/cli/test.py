"""``basicsr test -opt FILE``: BasicSR's ``test_pipeline``; results go to ``results/<name>/``."""
from typing import List

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.cli.pipeline import add_basicsr_flags, check_option_file, run_pipeline

HELP = 'evaluate a network with BasicSR\'s test pipeline (-opt FILE)'


def main(argv: List[str]) -> int:
    parser = OneLineParser(prog='basicsr test', description=HELP)
    add_basicsr_flags(parser, train=False)
    args = parser.parse_args(argv)
    check_option_file(args.opt)
    from basicsr.test import test_pipeline
    return run_pipeline(test_pipeline, 'basicsr test', argv)
