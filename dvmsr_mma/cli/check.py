"""``basicsr check -opt FILE``: the schema and the pre-flight checks of ``basicsr train`` / ``test``, nothing built
or written; exit 0, or 2 with the one line (for a project's own CI)."""
import argparse
import contextlib
import io
import os
import sys

from dvmsr_mma.cli import OneLineParser
from dvmsr_mma.cli.pipeline import _argv, check_option_file

HELP = 'validate an option file (schema and pre-flight checks; nothing is built or written): -opt FILE [--strict]'


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='basicsr check', description=HELP)
    parser.add_argument('-opt', required=True, metavar='FILE', help='option YAML file')
    parser.add_argument('--phase', choices=['train', 'test'],
                        help='check as basicsr train or basicsr test would (default: train if it has a train section)')
    parser.add_argument('--strict', action='store_true', help='unknown keys are errors, not warnings')
    parser.add_argument('--force_yml', nargs='+', metavar='KEY:KEY=VALUE', help='override options, as basicsr train')
    return parser


def check(args: argparse.Namespace) -> None:
    check_option_file(args.opt)


def run(args: argparse.Namespace) -> int:
    import basicsr.test
    import basicsr.train
    import yaml

    from dvmsr_mma.training import option_schema

    with open(args.opt, encoding='utf-8') as f:
        is_train = args.phase == 'train' if args.phase else bool((yaml.safe_load(f) or {}).get('train'))
    flags = ['--force_yml', *args.force_yml] if args.force_yml else []
    strict, option_schema.STRICT = option_schema.STRICT, args.strict or option_schema.STRICT
    try:
        with _argv(['basicsr', '-opt', args.opt, *flags]), contextlib.redirect_stdout(io.StringIO()):
            # parse_options prints "Disable distributed."
            (basicsr.train if is_train else basicsr.test).parse_options(os.getcwd(), is_train=is_train)
    finally:
        option_schema.STRICT = strict
    print(f'basicsr check: {args.opt}: ok ({"train" if is_train else "test"} options)', file=sys.stderr)
    return 0
