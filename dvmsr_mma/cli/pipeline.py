"""Shared by ``basicsr train`` and ``basicsr test``: BasicSR's own command-line flags and pipelines."""
import argparse
import contextlib
import importlib
import os
import sys
from typing import Callable, Iterator, List

import yaml

from dvmsr_mma.utils.errors import OptionError, TrainingStopped


def add_basicsr_flags(parser: argparse.ArgumentParser, train: bool) -> None:
    """The flags of ``basicsr.utils.options.parse_options``, so ``--help`` shows them and typos fail early."""
    parser.add_argument('-opt', required=True, metavar='FILE', help='option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    if train:
        parser.add_argument('--auto_resume', action='store_true', help='resume from the newest training state')
    parser.add_argument('--debug', action='store_true', help='debug mode: prefix the run name with debug_')
    parser.add_argument('--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--force_yml', nargs='+', metavar='KEY:KEY=VALUE',
                        help='override options, e.g. train:total_iter=9 (BasicSR syntax)')


def check_option_file(path: str) -> None:
    """Fail with one line on a missing or non-mapping option file, before BasicSR parses it."""
    if not os.path.isfile(path):
        raise OptionError(f'-opt: no such option file: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise OptionError(f'-opt: {path} is not valid YAML: {err}'.replace('\n', ' ')) from err
    if not isinstance(opt, dict):
        raise OptionError(f'-opt: {path} must be a YAML mapping of options')
    for key in ('name', 'model_type', 'datasets', 'path'):
        if key not in opt:
            raise OptionError(f'-opt: {path} has no "{key}" option')


@contextlib.contextmanager
def _argv(argv: List[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def pipeline_parser(command: str, description: str) -> argparse.ArgumentParser:
    """``basicsr train`` / ``basicsr test``: BasicSR's own flags, checked before anything is imported."""
    from dvmsr_mma.cli import OneLineParser

    parser = OneLineParser(prog=f'basicsr {command}', description=description)
    add_basicsr_flags(parser, train=command == 'train')
    return parser


def basicsr_argv(args: argparse.Namespace) -> List[str]:
    """The command line BasicSR's ``parse_options`` reads (from ``sys.argv``), rebuilt from the parsed flags."""
    argv = ['-opt', args.opt, '--launcher', args.launcher, '--local_rank', str(args.local_rank)]
    argv += ['--auto_resume'] * bool(getattr(args, 'auto_resume', False)) + ['--debug'] * args.debug
    return argv + (['--force_yml', *args.force_yml] if args.force_yml else [])


def run_pipeline(command: str, args: argparse.Namespace) -> int:
    """Run BasicSR's own pipeline with ``args`` as its command line and the current directory as root, so
    ``experiments/``, ``results/`` and ``tb_logger/`` (and ``--auto_resume``'s search) share one place. A run stopped
    on purpose (a non-finite loss, a SIGTERM/SIGINT) has logged why; its exit code is the stop's (1, or 128 + the
    signal), without a traceback."""
    pipeline: Callable[[str], None] = getattr(importlib.import_module(f'basicsr.{command}'), f'{command}_pipeline')
    with _argv([f'basicsr {command}', *basicsr_argv(args)]):
        try:
            pipeline(os.getcwd())
        except TrainingStopped as stop:
            return stop.exit_code
    return 0
