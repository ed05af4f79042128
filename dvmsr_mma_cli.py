"""The ``basicsr`` console script, outside the ``dvmsr_mma`` package so that it answers ``--help`` and a wrong
argument at once.

Importing ``dvmsr_mma`` runs its ``__init__``, which imports torch and basicsr and fills BasicSR's registries (3-5 s,
more on a busy machine); every subcommand needs that, but only once its arguments are good. So the package's module
is created here without running ``__init__`` (its ``__path__`` is set, so ``dvmsr_mma.cli`` and the light modules it
imports load), and :func:`dvmsr_mma.cli.main` runs ``__init__`` into that same module when the arguments parse.
``python -m dvmsr_mma`` imports the package first and is slower to answer; it runs the same commands.
"""
import importlib.util
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    if 'dvmsr_mma' in sys.modules:  # already imported (by the caller): nothing to defer
        from dvmsr_mma.cli import main as cli_main
        return cli_main(argv)
    spec = importlib.util.find_spec('dvmsr_mma')
    package = importlib.util.module_from_spec(spec)
    sys.modules['dvmsr_mma'] = package
    from dvmsr_mma.cli import main as cli_main
    return cli_main(argv, initialize=lambda: spec.loader.exec_module(package))


if __name__ == '__main__':
    sys.exit(main())
