"""The ``basicsr`` command: BasicSR's own train/test pipelines plus this package's tools.

Each subcommand is one module of this package exposing ``HELP`` (one line), ``parser() -> ArgumentParser``,
optionally ``check(args)`` (cheap checks of the arguments: files exist, a network is named) and ``run(args) -> int``;
or, where another parser owns the whole command line (``prep``, ``lmdb``), ``main(argv, initialize) -> int``.
Help and argument errors are answered by the parser and ``check`` alone, which import no torch, basicsr or numba:
the ``basicsr`` console script (``dvmsr_mma_cli``) runs the package's ``__init__`` (3-5 s: torch, basicsr, the
registries) only when ``main`` calls ``initialize``, after the arguments are good.
"""
import argparse
import importlib
import sys
from typing import Callable, List, Optional

from datasets_prep.cli import DefaultsHelpFormatter
from dvmsr_mma.utils import basicsr_importable
from dvmsr_mma.utils.errors import OptionError

COMMANDS = {  # add a subcommand here: name -> its module
    'train': 'dvmsr_mma.cli.train',
    'test': 'dvmsr_mma.cli.test',
    'check': 'dvmsr_mma.cli.check',
    'demo': 'dvmsr_mma.cli.demo',
    'prep': 'dvmsr_mma.cli.prep',
    'lmdb': 'dvmsr_mma.cli.lmdb',
    'infer': 'dvmsr_mma.cli.infer',
    'bench': 'dvmsr_mma.cli.bench',
    'lam': 'dvmsr_mma.cli.lam',
    'export': 'dvmsr_mma.cli.export',
}


NEEDS_BASICSR = {'train', 'test', 'demo', 'prep', 'lmdb'}  # BasicSR's pipelines, imresize, LMDB writer
# what to install for a module an inference-only install lacks
_INSTALL = {'basicsr': 'pip install --no-build-isolation basicsr==1.4.2 (after torch; see the README)',
            'cv2': 'pip install opencv-python-headless'}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single ``prog: error: ...`` line, and ``--help`` shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('formatter_class', DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def _help_text() -> str:
    return '\n'.join(f'  {name:<6} {importlib.import_module(module).HELP}' for name, module in COMMANDS.items())


def main(argv: Optional[List[str]] = None, initialize: Callable[[], None] = lambda: None) -> int:
    """Run ``basicsr COMMAND ...``; returns the exit status (argparse exits itself on ``--help`` and usage errors).
    ``initialize`` is called once the arguments are good, before the command runs (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineParser(
        prog='basicsr',
        description='BasicSR with the DVMSR / MMA Vision-Mamba networks registered.',
        epilog=f'commands:\n{_help_text()}\n\nRun "basicsr COMMAND --help" for the options of one command.')
    parser.add_argument('command', choices=list(COMMANDS), metavar='COMMAND', help=', '.join(COMMANDS))
    parser.add_argument('args', nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv[:1])
    command = importlib.import_module(COMMANDS[ns.command])
    try:
        if ns.command in NEEDS_BASICSR and not basicsr_importable():
            raise ModuleNotFoundError('basicsr', name='basicsr')  # before its arguments are checked
        if not hasattr(command, 'parser'):
            return command.main(argv[1:], initialize)
        args = command.parser().parse_args(argv[1:])
        if hasattr(command, 'check'):
            command.check(args)
        initialize()
        return command.run(args) or 0
    except (OptionError, FileNotFoundError) as err:
        print(f'basicsr {ns.command}: error: {err}', file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an inference-only install (ComfyUI, chaiNNer) has no basicsr, maybe no cv2
        missing = (err.name or '').split('.')[0]
        if missing not in _INSTALL:
            raise
        print(f'basicsr {ns.command}: error: {missing} is not installed, and this command needs it: '
              f'{_INSTALL[missing]}', file=sys.stderr)
        return 2
