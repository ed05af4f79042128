"""``python -m datasets_prep STEP ...`` / ``basicsr prep STEP ...`` / ``basicsr lmdb ...`` (= ``make_lmdb``).

``main(argv)`` takes the arguments without the program name and returns the exit status: 0 done,
1 ``verify`` found problems, 2 bad input (one ``error: ...`` line on stderr, no traceback).
"""
import argparse
import sys
from typing import List, Optional

from datasets_prep.common import PrepError
from datasets_prep.verify import VerifyError


class _Parser(argparse.ArgumentParser):
    """Usage errors become a ``PrepError`` so they too are one ``error: ...`` line."""

    def error(self, message: str):
        raise PrepError(f'{self.prog}: {message} (see --help)')


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description='Prepare SR datasets for BasicSR.')
    sub = parser.add_subparsers(dest='step', required=True, metavar='STEP')

    p = sub.add_parser('extract_subimages', help="crop images into sub-images, as BasicSR's script")
    p.add_argument('--input', required=True, help='folder of large images (e.g. DIV2K_train_HR)')
    p.add_argument('--output', required=True, help='folder for the sub-images (e.g. DIV2K_train_HR_sub)')
    p.add_argument('--scale', type=int, default=1, help='LR folder scale: crop/step/thresh = 480/240/0 // scale')
    p.add_argument('--crop-size', type=int, help='default 480 // scale')
    p.add_argument('--step', dest='step_size', type=int, help='default 240 // scale')
    p.add_argument('--thresh-size', type=int, help='default 0')
    p.add_argument('--compression-level', type=int, default=3, help='PNG level 0-9 (default 3, as BasicSR)')
    p.add_argument('--n-thread', type=int, help='worker processes (default: all cores)')
    p.add_argument('--overwrite', action='store_true', help='write into a non-empty output folder')

    p = sub.add_parser('make_lr', help='MATLAB-bicubic LR images (mod-crop HR first)')
    p.add_argument('--input', required=True, help='HR folder')
    p.add_argument('--output', required=True, help='LR folder (files keep the HR names)')
    p.add_argument('--scale', type=int, required=True, help='2, 3, 4, ...')
    p.add_argument('--suffix', default='', help="appended to the stem, e.g. 'x4' -> 0001x4.png (default none)")
    p.add_argument('--compression-level', type=int, default=3, help='PNG level 0-9 (default 3)')
    p.add_argument('--n-thread', type=int, help='worker processes (default: all cores)')
    p.add_argument('--overwrite', action='store_true', help='replace existing LR files')

    p = sub.add_parser('make_lmdb', help='image folder -> LMDB for io_backend: lmdb')
    p.add_argument('--input', required=True, help='image folder (keys = file names without extension)')
    p.add_argument('--output', required=True, help='LMDB folder, must end with .lmdb')
    p.add_argument('--compress-level', type=int, default=1, help='PNG level of the stored values (default 1)')
    p.add_argument('--batch', type=int, default=5000, help='images per LMDB commit (default 5000)')
    p.add_argument('--multiprocessing-read', action='store_true', help='read all images into RAM first, in parallel')
    p.add_argument('--n-thread', type=int, help='processes for --multiprocessing-read (default: all cores)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing LMDB (only once the new one is done)')

    p = sub.add_parser('verify', help='check an LMDB (and its HR/LR pairing), or decode every image of a folder')
    p.add_argument('--input', required=True, help='LMDB or image folder to check (the HR LMDB with --lr)')
    p.add_argument('--lr', help='LR LMDB to pair with --input')
    p.add_argument('--scale', type=int, help='HR = scale x LR (with --lr)')

    p = sub.add_parser('benchmark', help='arrange Set5/Set14/B100/Urban100/Manga109, make missing LR')
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
        return make_lmdb(args.input, args.output, args.compress_level, args.overwrite, args.batch, args.n_thread,
                         args.multiprocessing_read, progress)
    if args.step == 'verify':
        from datasets_prep.verify import verify_lmdb
        return verify_lmdb(args.input, args.lr, args.scale, progress)
    from datasets_prep.benchmark import SETS, arrange_benchmark
    return arrange_benchmark(args.input, args.output, args.sets or SETS, args.scales, args.overwrite, progress,
                             args.mod)


def main(argv: Optional[List[str]] = None, prog: str = 'python -m datasets_prep') -> int:
    parser = _parser(prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        summary = _run(args)
    except VerifyError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except (PrepError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(summary)
    return 0
