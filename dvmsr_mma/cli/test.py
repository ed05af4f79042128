"""``basicsr test -opt FILE``: BasicSR's ``test_pipeline``; results go to ``results/<name>/``."""
from typing import List

from dvmsr_mma.cli.pipeline import run_pipeline

HELP = 'evaluate a network with BasicSR\'s test pipeline (-opt FILE)'


def main(argv: List[str]) -> int:
    return run_pipeline('test', HELP, argv)
