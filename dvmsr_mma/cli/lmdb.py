"""``basicsr lmdb ...``: short for ``basicsr prep make_lmdb ...``."""
from typing import Callable, List

HELP = 'pack an image folder into an LMDB for BasicSR (same as "prep make_lmdb")'


def main(argv: List[str], initialize: Callable[[], None]) -> int:
    from datasets_prep.cli import main as prep_main
    return prep_main(['make_lmdb', *argv], prog='basicsr prep', initialize=initialize)
