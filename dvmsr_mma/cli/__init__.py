"""The ``basicsr`` command: BasicSR's own train/test pipelines plus this package's tools.

Each subcommand is one module of this package exposing ``HELP`` (one line) and ``main(argv) -> int``.
"""
import argparse
import importlib
import sys
from typing import List, Optional

from dvmsr_mma.utils import basicsr_importable
from dvmsr_mma.utils.errors import OptionError

COMMANDS = {  # add a subcommand here: name -> module with HELP and main(argv)
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
    """argparse, but a usage error is a single ``prog: error: ...`` line."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def _help_text() -> str:
    return '\n'.join(f'  {name:<6} {importlib.import_module(module).HELP}' for name, module in COMMANDS.items())


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineParser(
        prog='basicsr',
        description='BasicSR with the DVMSR / MMA Vision-Mamba networks registered.',
        epilog=f'commands:\n{_help_text()}\n\nRun "basicsr COMMAND --help" for the options of one command.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=list(COMMANDS), metavar='COMMAND', help=', '.join(COMMANDS))
    parser.add_argument('args', nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv[:1])
    try:
        if ns.command in NEEDS_BASICSR and not basicsr_importable():
            raise ModuleNotFoundError('basicsr', name='basicsr')  # before its arguments are checked
        return importlib.import_module(COMMANDS[ns.command]).main(argv[1:]) or 0
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
