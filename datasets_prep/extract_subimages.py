"""Crop large training images (DIV2K, DF2K) into overlapping sub-images, as BasicSR's script does.

Same positions, names and file format as ``scripts/data_preparation/extract_subimages.py`` of BasicSR, so
option files and meta-info written for its output work unchanged:
- tops = ``range(0, h - crop + 1, step)``, plus ``h - crop`` when the last tile ends more than
  ``thresh_size`` pixels before the bottom; the same for lefts; tiles numbered row-major from 1;
- name ``<stem>_s001<ext>`` where ``x2``, ``x3``, ``x4`` and ``x8`` are removed from the stem (so DIV2K's
  ``0001x4.png`` and HR ``0001.png`` give the same sub-image names); the input's extension is kept, written
  with ``cv2.imwrite`` at PNG ``compress_level``; images read with ``IMREAD_UNCHANGED``;
- defaults 480/240/0 for HR; for LR folders of scale ``s`` use ``scale=s`` (crop/step/threshold divided
  by ``s``: 240/120/0 for x2, 160/80/0 for x3, 120/60/0 for x4), so the LR tiles line up with the HR ones.
One difference: BasicSR crashes on an image smaller than the crop; here it is skipped and named.
"""
import os
import os.path as osp
import sys
from multiprocessing import Pool
from typing import List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from datasets_prep.common import PrepError, Summary, Timer, list_images, name_list

HR_CROP, HR_STEP, HR_THRESH = 480, 240, 0


def tile_starts(length: int, crop_size: int, step: int, thresh_size: int) -> List[int]:
    """Start offsets along one axis (empty if the image is shorter than the crop)."""
    starts = list(range(0, length - crop_size + 1, step))
    if starts and length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def subimage_stem(stem: str) -> str:
    """BasicSR's renaming: drop ``x2``/``x3``/``x4``/``x8`` anywhere in the stem (DIV2K's LR suffixes)."""
    return stem.replace('x2', '').replace('x3', '').replace('x4', '').replace('x8', '')


def _worker(job: Tuple[str, str, int, int, int, int]) -> Tuple[str, int, int, str]:
    """-> (input name, tiles written (-1: unreadable, 0: too small), bytes written, why it is unreadable)."""
    from dvmsr_mma.tools.image_io import ImageReadError, read_image  # not at import: dvmsr_mma imports datasets_prep

    path, save_folder, crop_size, step, thresh_size, level = job
    name = osp.basename(path)
    try:
        img = read_image(path)
    except ImageReadError as err:
        return name, -1, 0, str(err)
    stem, ext = osp.splitext(name)
    stem = subimage_stem(stem)
    h, w = img.shape[:2]
    tops, lefts = tile_starts(h, crop_size, step, thresh_size), tile_starts(w, crop_size, step, thresh_size)
    index, nbytes = 0, 0
    for top in tops:
        for left in lefts:
            index += 1
            out = osp.join(save_folder, f'{stem}_s{index:03d}{ext}')
            tile = np.ascontiguousarray(img[top:top + crop_size, left:left + crop_size, ...])
            cv2.imwrite(out, tile, [cv2.IMWRITE_PNG_COMPRESSION, level])
            nbytes += osp.getsize(out)
    return name, index, nbytes, ''


def extract_subimages(input_folder: str,
                      save_folder: str,
                      crop_size: Optional[int] = None,
                      step: Optional[int] = None,
                      thresh_size: Optional[int] = None,
                      scale: int = 1,
                      compression_level: int = 3,
                      n_thread: Optional[int] = None,
                      overwrite: bool = False,
                      progress: bool = True) -> Summary:
    """Write the sub-images of every image in ``input_folder`` to ``save_folder``; returns the summary.

    ``crop_size``/``step``/``thresh_size`` default to BasicSR's 480/240/0 divided by ``scale``. A non-empty
    ``save_folder`` is refused unless ``overwrite`` (BasicSR's script exits there; files are then replaced
    by name, others left). ``n_thread`` worker processes (default: all cores; BasicSR uses 20).
    """
    if not isinstance(scale, int) or scale < 1:
        raise PrepError(f'scale must be a positive integer, got {scale!r}')
    crop_size = HR_CROP // scale if crop_size is None else crop_size
    step = HR_STEP // scale if step is None else step
    thresh_size = HR_THRESH // scale if thresh_size is None else thresh_size
    if crop_size < 1 or step < 1 or thresh_size < 0:
        raise PrepError(f'need crop_size >= 1, step >= 1, thresh_size >= 0; got {crop_size}/{step}/{thresh_size}')
    if not 0 <= compression_level <= 9:
        raise PrepError(f'compression_level must be 0..9, got {compression_level}')
    names = list_images(input_folder)
    if osp.isdir(save_folder) and os.listdir(save_folder) and not overwrite:
        raise PrepError(f'{save_folder} already exists and is not empty; use --overwrite to write into it')
    os.makedirs(save_folder, exist_ok=True)
    jobs = [(osp.join(input_folder, n), save_folder, crop_size, step, thresh_size, compression_level) for n in names]
    n_thread = max(1, min(n_thread or os.cpu_count() or 1, len(jobs)))

    tiles, nbytes, unreadable, too_small = 0, 0, [], []
    with Timer() as timer, tqdm(total=len(jobs), unit='img', desc='extract_subimages', disable=not progress) as bar:
        pool = Pool(n_thread) if n_thread > 1 else None
        try:
            results = pool.imap_unordered(_worker, jobs) if pool else map(_worker, jobs)
            for name, count, size, why in results:
                bar.update(1)
                if count < 0:
                    tqdm.write(f'failed: {why}', file=sys.stderr)
                    unreadable.append(name)
                elif count == 0:
                    too_small.append(name)
                tiles, nbytes = tiles + max(count, 0), nbytes + size
        finally:
            if pool:
                pool.close()
                pool.join()
    if unreadable:
        raise PrepError(f'{len(unreadable)} unreadable image(s) in {input_folder}: {name_list(sorted(unreadable))}')
    extra = {'inputs': len(names), 'crop': f'{crop_size}/{step}/{thresh_size}'}
    if too_small:
        extra['skipped_smaller_than_crop'] = name_list(sorted(too_small), 3)
    return Summary('extract_subimages', tiles, nbytes, timer.seconds, save_folder, extra)


__all__ = ['extract_subimages', 'tile_starts', 'subimage_stem']
