"""``python -m datasets_prep STEP ...`` / ``basicsr prep STEP ...`` / ``basicsr lmdb ...`` (= ``make_lmdb``).

``main(argv)`` takes the arguments without the program name and returns the exit status: 0 done,
1 ``verify`` found problems, 2 bad input (one ``error: ...`` line on stderr, no traceback).
"""
import argparse
import functools
import sys
from typing import Callable, List, Optional

from datasets_prep.common import PrepError


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default, unless its help already says it or there is none to show (None,
    a flag's False); argparse's ``ArgumentDefaultsHelpFormatter`` would print "(default: None)" for those.
    Descriptions and epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or 'default' in text):
            return text
        return f'{text} (default: %(default)s)'


class _Parser(argparse.ArgumentParser):
    """Usage errors become a ``PrepError`` so they too are one ``error: ...`` line."""

    def error(self, message: str):
        raise PrepError(f'{self.prog}: {message} (see --help)')


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description='Prepare SR datasets for BasicSR.')
    sub = parser.add_subparsers(dest='step', required=True, metavar='STEP')
    add = functools.partial(sub.add_parser, formatter_class=DefaultsHelpFormatter)

    p = add('extract_subimages', help="crop images into sub-images, as BasicSR's script")
    p.add_argument('--input', required=True, help='folder of large images (e.g. DIV2K_train_HR)')
    p.add_argument('--output', required=True, help='folder for the sub-images (e.g. DIV2K_train_HR_sub)')
    p.add_argument('--scale', type=int, default=1, help='LR folder scale: crop/step/thresh = 480/240/0 // scale')
    p.add_argument('--crop-size', type=int, help='default 480 // scale')
    p.add_argument('--step', dest='step_size', type=int, help='default 240 // scale')
    p.add_argument('--thresh-size', type=int, help='default 0')
    p.add_argument('--compression-level', type=int, default=3, metavar='LEVEL', help='PNG level 0-9 (as BasicSR)')
    p.add_argument('--n-thread', type=int, help='worker processes (default: all cores)')
    p.add_argument('--overwrite', action='store_true', help='write into a non-empty output folder')

    p = add('make_lr', help='MATLAB-bicubic LR images (mod-crop HR first)')
    p.add_argument('--input', required=True, help='HR folder')
    p.add_argument('--output', required=True, help='LR folder (files keep the HR names)')
    p.add_argument('--scale', type=int, required=True, help='2, 3, 4, ...')
    p.add_argument('--suffix', default='', help="appended to the stem, e.g. 'x4' -> 0001x4.png (default none)")
    p.add_argument('--compression-level', type=int, default=3, metavar='LEVEL', help='PNG level 0-9')
    p.add_argument('--n-thread', type=int, help='worker processes (default: all cores)')
    p.add_argument('--overwrite', action='store_true', help='replace existing LR files')

    p = add('make_lmdb', help='image folder -> LMDB for io_backend: lmdb')
    p.add_argument('--input', required=True, help='image folder (keys = file names without extension)')
    p.add_argument('--output', required=True, help='LMDB folder, must end with .lmdb')
    p.add_argument('--compression-level', '--compress-level', type=int, default=1, metavar='LEVEL',  # old: alias
                   help='PNG level 0-9 of the stored values')
    p.add_argument('--batch', type=int, default=5000, help='images per LMDB commit')
    p.add_argument('--multiprocessing-read', action='store_true', help='read all images into RAM first, in parallel')
    p.add_argument('--n-thread', type=int, help='processes for --multiprocessing-read (default: all cores)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing LMDB (only once the new one is done)')

    p = add('verify', help='check an LMDB (and its HR/LR pairing), or decode every image of a folder')
    p.add_argument('--input', required=True, help='LMDB or image folder to check (the HR LMDB with --lr)')
    p.add_argument('--lr', help='LR LMDB to pair with --input')
    p.add_argument('--scale', type=int, help='HR = scale x LR (with --lr)')

    p = add('benchmark', help='arrange Set5/Set14/B100/Urban100/Manga109, make missing LR')
    p.add_argument('--input', required=True, help='folder holding the downloaded set folders')
    p.add_argument('--output', default='datasets/benchmark', help='default datasets/benchmark')
    p.add_argument('--mod', type=int, default=12, help='mod-crop HR to a multiple of this (default 12, as GTmod12)')
    p.add_argument('--sets', nargs='+', default=None, help='default: all five')
    p.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], help='default 2 3 4')
    p.add_argument('--overwrite', action='store_true', help='replace files already arranged')

    for action in sub.choices.values():
        action.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


def _run(args: argparse.Namespace):
    progress = not args.quiet
    if args.step == 'extract_subimages':
        from datasets_prep.extract_subimages import extract_subimages
        return extract_subimages(args.input, args.output, args.crop_size, args.step_size, args.thresh_size,
                                 args.scale, args.compression_level, args.n_thread, args.overwrite, progress)
    if args.step == 'make_lr':
        from datasets_prep.make_lr import make_lr
        return make_lr(args.input, args.output, args.scale, args.suffix, args.compression_level, args.overwrite,
                       args.n_thread, progress)
    if args.step == 'make_lmdb':
        from datasets_prep.make_lmdb import make_lmdb
        return make_lmdb(args.input, args.output, args.compression_level, args.overwrite, args.batch, args.n_thread,
                         args.multiprocessing_read, progress)
    if args.step == 'verify':
        from datasets_prep.verify import verify_lmdb
        return verify_lmdb(args.input, args.lr, args.scale, progress)
    from datasets_prep.benchmark import SETS, arrange_benchmark
    return arrange_benchmark(args.input, args.output, args.sets or SETS, args.scales, args.overwrite, progress,
                             args.mod)


def main(argv: Optional[List[str]] = None, prog: str = 'python -m datasets_prep',
         initialize: Callable[[], None] = lambda: None) -> int:
    """``initialize`` runs once the arguments parse, before the step (``basicsr prep`` imports the dvmsr_mma
    package, torch and basicsr only then, so that ``--help`` and usage errors answer at once)."""
    parser = _parser(prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        initialize()
        summary = _run(args)
    except (PrepError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f'error: {err}', file=sys.stderr)
        verify = sys.modules.get('datasets_prep.verify')  # imported by the verify step only: it needs cv2
        return 1 if verify and isinstance(err, verify.VerifyError) else 2  # 1: verify found problems
    print(summary)
    return 0
