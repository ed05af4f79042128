"""Image folder -> LMDB, through BasicSR's own ``make_lmdb_from_imgs``.

The result is what ``PairedImageDataset`` (and every BasicSR dataset) reads with ``io_backend: lmdb``:
``<name>.lmdb/{data.mdb, lock.mdb, meta_info.txt}``, keys = file names without extension, values = PNG
bytes at ``compress_level``, one ``<key>.png (h,w,c) <level>`` line per image in ``meta_info.txt``
(BasicSR takes the key as ``line.split('.')[0]``, so names with a dot in the stem are refused).

Safety, because a half-written LMDB opens fine and fails only deep into training:
- the LMDB is built in a hidden ``.<name>.partial-<pid>/`` folder next to the destination (BasicSR closes
  ``meta_info.txt`` last, after the environment) and renamed into place only when complete, so a killed
  conversion leaves nothing at the destination (just the hidden partial folder, safe to delete);
- an existing destination is replaced only with ``overwrite=True`` (and only if it is an LMDB folder or
  empty), and the old one is removed only after the new one is in place;
- unreadable images are found before any writing starts (header check) or, if one only fails to decode,
  reported by name afterwards, with nothing left at the destination.
"""
import os
import os.path as osp
import shutil
from typing import List, Optional

import cv2

from datasets_prep.common import PrepError, Summary, Timer, folder_bytes, list_images, name_list


def _header_sizes(folder: str, names: List[str]) -> List[int]:
    """Upper bound of each image's raw size from its header (Pillow reads headers only); raises on bad ones."""
    from PIL import Image
    sizes, bad = [], []
    for name in names:
        try:
            with Image.open(osp.join(folder, name)) as img:
                w, h = img.size
                sizes.append(w * h * 4 * (2 if img.mode.startswith('I') else 1))
        except Exception:  # Pillow raises several types for broken files
            bad.append(name)
    if bad:
        raise PrepError(f'{len(bad)} unreadable image(s) in {folder}: {name_list(bad)}')
    return sizes


def _find_undecodable(folder: str, names: List[str]) -> List[str]:
    return [n for n in names if cv2.imread(osp.join(folder, n), cv2.IMREAD_UNCHANGED) is None]


def _is_replaceable(path: str) -> bool:
    return osp.isdir(path) and (osp.isfile(osp.join(path, 'data.mdb')) or not os.listdir(path))


def make_lmdb(folder: str,
              lmdb_path: str,
              compress_level: int = 1,
              overwrite: bool = False,
              batch: int = 5000,
              n_thread: Optional[int] = None,
              multiprocessing_read: bool = False,
              progress: bool = True) -> Summary:
    """Pack every image directly in ``folder`` into ``lmdb_path`` (must end with ``.lmdb``); returns the summary.

    ``multiprocessing_read`` reads all images into memory first with ``n_thread`` processes (BasicSR's
    option: faster on many cores, needs RAM for the whole folder).
    """
    import dvmsr_mma  # noqa: F401  (patches basicsr 1.4.2 before it is imported)
    # isort: split
    from basicsr.utils import lmdb_util

    lmdb_path = osp.abspath(lmdb_path.rstrip('/\\'))
    if not lmdb_path.endswith('.lmdb'):
        raise PrepError(f"LMDB path must end with '.lmdb' (BasicSR checks it): {lmdb_path}")
    if not 0 <= compress_level <= 9:
        raise PrepError(f'compress_level must be 0..9, got {compress_level}')
    if osp.lexists(lmdb_path):
        if not overwrite:
            raise PrepError(f'{lmdb_path} already exists; use --overwrite to replace it')
        if not _is_replaceable(lmdb_path):
            raise PrepError(f'{lmdb_path} exists and is not an LMDB folder; refusing to replace it')
    names = list_images(folder)
    keys = [osp.splitext(n)[0] for n in names]
    dotted = [n for n, k in zip(names, keys) if '.' in k]
    if dotted:
        raise PrepError(f'BasicSR reads LMDB keys up to the first dot; rename: {name_list(dotted)}')
    non_ascii = [n for n, k in zip(names, keys) if not k.isascii()]
    if non_ascii:
        raise PrepError(f'LMDB keys must be ASCII (BasicSR encodes them so); rename: {name_list(non_ascii)}')
    raw_bound = sum(_header_sizes(folder, names))

    parent, base = osp.split(lmdb_path)
    os.makedirs(parent, exist_ok=True)
    partial = osp.join(parent, f'.{base}.partial-{os.getpid()}')
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    tmp_lmdb = osp.join(partial, base)  # BasicSR wants the '.lmdb' ending on the folder it writes
    with Timer() as timer:
        try:
            write = lmdb_util.make_lmdb_from_imgs if progress else _quiet_make_lmdb_from_imgs
            # PNG of incompressible data is at most ~raw size; LMDB maps lazily, so a loose bound is free
            write(folder, tmp_lmdb, names, keys, batch, compress_level, multiprocessing_read,
                  n_thread or os.cpu_count() or 1, int(raw_bound * 1.5) + 2**26)
        except (AttributeError, TypeError, cv2.error) as err:  # BasicSR's reader gets None for a bad file
            shutil.rmtree(partial, ignore_errors=True)
            bad = _find_undecodable(folder, names)
            if bad:
                raise PrepError(f'{len(bad)} unreadable image(s) in {folder}: {name_list(bad)}') from None
            raise PrepError(f'LMDB conversion of {folder} failed: {err}') from err
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        old = None
        if osp.lexists(lmdb_path):  # overwrite: move the old one aside, put the new one in, then delete
            old = osp.join(parent, f'.{base}.old-{os.getpid()}')
            os.rename(lmdb_path, old)
        os.rename(tmp_lmdb, lmdb_path)
        os.rmdir(partial)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    return Summary('make_lmdb', len(names), folder_bytes(lmdb_path), timer.seconds, lmdb_path)


def _quiet_make_lmdb_from_imgs(*args):
    """BasicSR's writer with its prints and progress bar silenced (``progress=False``)."""
    import contextlib
    import io
    from unittest import mock

    import tqdm as tqdm_module
    from basicsr.utils import lmdb_util
    quiet_tqdm = lambda *a, **k: tqdm_module.tqdm(*a, **{**k, 'disable': True})  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()), mock.patch.object(lmdb_util, 'tqdm', quiet_tqdm):
        return lmdb_util.make_lmdb_from_imgs(*args)


__all__ = ['make_lmdb']
