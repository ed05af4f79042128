"""``basicsr test -opt FILE``: BasicSR's ``test_pipeline``; results go to ``results/<name>/``."""
import argparse

from dvmsr_mma.cli.pipeline import check_option_file, pipeline_parser, run_pipeline

HELP = 'evaluate a network with BasicSR\'s test pipeline (-opt FILE)'


def parser() -> argparse.ArgumentParser:
    return pipeline_parser('test', HELP)


def check(args: argparse.Namespace) -> None:
    check_option_file(args.opt)


def run(args: argparse.Namespace) -> int:
    return run_pipeline('test', args)
