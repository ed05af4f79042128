"""Bicubic LR images (x2/x3/x4, any integer scale) with BasicSR's MATLAB-exact ``imresize``.

As BasicSR's ``generate_bicubic_img.m`` does, each HR image is first mod-cropped to a multiple of the scale
(``basicsr.data.transforms.mod_crop``), so LR × scale == the cropped HR exactly; then it is resized with
``basicsr.utils.matlab_functions.imresize(img / max, 1 / scale)`` (antialiasing on, as MATLAB) and rounded
the way BasicSR turns float images into files: ``clip(x * max, 0, max).round()`` to the input's dtype
(uint8, or uint16 for 16-bit PNGs). The HR files themselves are left untouched.

Naming: the LR file has the HR file's name (``0001.png`` -> ``0001.png``), which is what BasicSR's
``PairedImageDataset`` expects with ``filename_tmpl: '{}'`` and what ``make_lmdb`` needs to give HR and LR
the same LMDB keys. ``suffix='x4'`` gives DIV2K's naming instead (``0001x4.png``; then use
``filename_tmpl: '{}x4'`` for folders; ``extract_subimages`` strips ``x2/x3/x4/x8`` from names as BasicSR
does, so sub-images of either naming get the same keys).
"""
import os
import os.path as osp
import sys
from multiprocessing import Pool
from typing import Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from datasets_prep.common import PrepError, Summary, Timer, list_images, name_list


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Mod-crop then MATLAB-bicubic downscale one HxW[xC] uint8/uint16 image by ``scale``."""
    import dvmsr_mma  # noqa: F401  (patches basicsr 1.4.2 before it is imported)
    # isort: split
    from basicsr.data.transforms import mod_crop
    from basicsr.utils.matlab_functions import imresize

    if img.dtype not in (np.uint8, np.uint16):
        raise PrepError(f'unsupported image dtype {img.dtype} (uint8 or uint16 expected)')
    max_val = float(np.iinfo(img.dtype).max)
    hr = mod_crop(img, scale)
    if hr.shape[0] == 0 or hr.shape[1] == 0:
        raise PrepError(f'image {img.shape[1]}x{img.shape[0]} is smaller than the scale {scale}')
    lr = imresize(hr.astype(np.float32) / max_val, 1 / scale)
    return np.clip(lr * max_val, 0, max_val).round().astype(img.dtype)


def _worker(job: Tuple[str, str, int, int]) -> Tuple[str, Optional[int], str]:
    """(HR path, LR path, scale, png level) -> (HR name, bytes written or None if unreadable, why)."""
    from dvmsr_mma.tools.image_io import ImageReadError, read_image  # not at import: dvmsr_mma imports datasets_prep

    src, dst, scale, level = job
    try:
        img = read_image(src)
    except ImageReadError as err:
        return osp.basename(src), None, str(err)
    cv2.imwrite(dst, bicubic_downscale(img, scale), [cv2.IMWRITE_PNG_COMPRESSION, level])
    return osp.basename(src), osp.getsize(dst), ''


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)  # one process per core already


def make_lr(hr_dir: str,
            lr_dir: str,
            scale: int,
            suffix: str = '',
            compress_level: int = 3,
            overwrite: bool = False,
            n_thread: Optional[int] = None,
            progress: bool = True) -> Summary:
    """Write ``lr_dir/<HR name with suffix>`` for every image in ``hr_dir``; returns the summary.

    Existing LR files are not replaced unless ``overwrite``; unreadable HR images are reported by name
    (after the readable ones are written).
    """
    if not isinstance(scale, int) or scale < 1:
        raise PrepError(f'scale must be a positive integer, got {scale!r}')
    if not 0 <= compress_level <= 9:
        raise PrepError(f'compress_level must be 0..9, got {compress_level}')
    names = list_images(hr_dir)
    jobs = []
    for name in names:
        stem, ext = osp.splitext(name)
        jobs.append((osp.join(hr_dir, name), osp.join(lr_dir, f'{stem}{suffix}{ext}'), scale, compress_level))
    if osp.abspath(hr_dir) == osp.abspath(lr_dir) and not suffix:
        raise PrepError('lr_dir is hr_dir and no suffix: the HR images would be overwritten')
    existing = [osp.basename(j[1]) for j in jobs if osp.exists(j[1])]
    if existing and not overwrite:
        raise PrepError(f'{len(existing)} LR file(s) already exist in {lr_dir} ({name_list(existing, 3)}); '
                        'use --overwrite to replace them')
    os.makedirs(lr_dir, exist_ok=True)
    n_thread = n_thread or min(len(jobs), os.cpu_count() or 1)

    written, unreadable, total = 0, [], 0
    with Timer() as timer:
        with tqdm(total=len(jobs), unit='img', desc=f'make_lr x{scale}', disable=not progress) as bar:
            pool = Pool(n_thread, initializer=_init_worker) if n_thread > 1 else None
            try:
                results = (pool.imap_unordered(_worker, jobs, chunksize=max(1, len(jobs) // (8 * n_thread)))
                           if pool else map(_worker, jobs))
                for name, nbytes, why in results:
                    bar.update(1)
                    if nbytes is None:
                        tqdm.write(f'failed: {why}', file=sys.stderr)
                        unreadable.append(name)
                    else:
                        written, total = written + 1, total + nbytes
            finally:
                if pool:
                    pool.close()
                    pool.join()
    if unreadable:
        raise PrepError(f'{len(unreadable)} unreadable image(s) in {hr_dir}: {name_list(sorted(unreadable))}')
    return Summary(f'make_lr x{scale}', written, total, timer.seconds, lr_dir)


__all__ = ['make_lr', 'bicubic_downscale']
