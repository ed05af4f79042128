"""``basicsr train -opt FILE``: BasicSR's ``train_pipeline``, flags and ``--force_yml`` syntax unchanged."""
from typing import List

from dvmsr_mma.cli.pipeline import run_pipeline

HELP = 'train a network with BasicSR\'s train pipeline (-opt FILE [--auto_resume] [--debug] ...)'


def main(argv: List[str]) -> int:
    return run_pipeline('train', HELP, argv)
