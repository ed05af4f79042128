"""``basicsr prep STEP ...``: dataset preparation (sub-images, bicubic LR, LMDB, verify, benchmark layout)."""
from typing import Callable, List

HELP = 'prepare datasets: extract_subimages, make_lr, make_lmdb, verify, benchmark'


def main(argv: List[str], initialize: Callable[[], None]) -> int:
    """The whole command line is ``datasets_prep``'s (its own parser and one-line errors)."""
    from datasets_prep.cli import main as prep_main
    return prep_main(argv, prog='basicsr prep', initialize=initialize)
