"""``basicsr train -opt FILE``: BasicSR's ``train_pipeline``, flags and ``--force_yml`` syntax unchanged."""
import argparse

from dvmsr_mma.cli.pipeline import check_option_file, pipeline_parser, run_pipeline

HELP = 'train a network with BasicSR\'s train pipeline (-opt FILE [--auto_resume] [--debug] ...)'


def parser() -> argparse.ArgumentParser:
    return pipeline_parser('train', HELP)


def check(args: argparse.Namespace) -> None:
    check_option_file(args.opt)


def run(args: argparse.Namespace) -> int:
    return run_pipeline('train', args)
