"""Arrange the SR benchmark sets into ``datasets/benchmark/<Set>/{HR,LR_bicubic/X<s>}``, making missing LR.

Sets: Set5, Set14, B100, Urban100, Manga109. For each, the source root is searched for a folder named
like the set (case-insensitive; B100 also as BSD100/BSDS100) and, inside it, the HR images in the first of
``HR``, ``GTmod12``, ``original``, ``hr`` or the set folder itself that holds images (the EDSR
``benchmark.zip`` and BasicSR's Google-Drive layouts both work).

LR naming is EDSR's ``benchmark.zip`` one, which the package's test options expect: ``Set5/HR/baby.png`` pairs
with ``Set5/LR_bicubic/X4/babyx4.png`` (``filename_tmpl: '{}x4'``). LR already in the source
(``LR_bicubic/X<s>`` or ``LRbicx<s>``, named ``baby.png`` or ``babyx4.png``) is copied under that name;
missing LR is generated with ``make_lr``'s MATLAB bicubic. The HR images are mod-cropped to ``mod`` (12 by
default: BasicSR's ``GTmod12``, one HR folder for x2, x3 and x4), which is what published numbers use: the
released DVMSR x4 scores the paper's 32.19 dB on Set5 with mod-12 HR, 32.21 dB with the uncropped originals.
Source LR is copied only where its size is exactly the cropped HR's divided by the scale; otherwise it is
generated. Files already at the destination are kept unless ``overwrite``.
"""
import os
import os.path as osp
from typing import Dict, Iterable, List, Optional

import cv2
from tqdm import tqdm

from datasets_prep.common import IMG_EXTENSIONS, PrepError, Summary, Timer, folder_bytes, list_images
from datasets_prep.make_lr import bicubic_downscale

SETS = ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')
ALIASES = {'B100': ('b100', 'bsd100', 'bsds100')}
HR_DIRS = ('HR', 'GTmod12', 'original', 'hr')


def _find_child(folder: str, names: Iterable[str]) -> Optional[str]:
    if not osp.isdir(folder):
        return None
    children = {c.lower(): c for c in os.listdir(folder) if osp.isdir(osp.join(folder, c))}
    for name in names:
        if name.lower() in children:
            return osp.join(folder, children[name.lower()])
    return None


def _has_images(folder: str) -> bool:
    return osp.isdir(folder) and any(n.lower().endswith(IMG_EXTENSIONS) for n in os.listdir(folder))


def find_set(src_root: str, name: str) -> Optional[Dict[str, object]]:
    """{'hr': folder, 'lr': {scale: folder}} for one set under ``src_root``, or None if absent."""
    set_dir = _find_child(src_root, ALIASES.get(name, (name, )))
    if set_dir is None:
        return None
    hr = next((d for d in (_find_child(set_dir, (h, )) for h in HR_DIRS) if d and _has_images(d)), None)
    if hr is None and _has_images(set_dir):
        hr = set_dir
    if hr is None:
        raise PrepError(f'{set_dir}: no HR images (looked in {", ".join(HR_DIRS)} and the folder itself)')
    lr = {}
    for scale in range(2, 9):
        cand = _find_child(_find_child(set_dir, ('LR_bicubic', )) or '', (f'X{scale}', ))
        cand = cand or _find_child(set_dir, (f'LRbicx{scale}', ))
        if cand and _has_images(cand):
            lr[scale] = cand
    return {'hr': hr, 'lr': lr}


def _source_lr(lr_dir: str, stem: str, scale: int) -> Optional[str]:
    for name in os.listdir(lr_dir):
        s, ext = osp.splitext(name)
        if ext.lower() in IMG_EXTENSIONS and s in (stem, f'{stem}x{scale}', f'{stem}_x{scale}'):
            return osp.join(lr_dir, name)
    return None


def arrange_benchmark(src_root: str,
                      dst_root: str = 'datasets/benchmark',
                      sets: Iterable[str] = SETS,
                      scales: Iterable[int] = (2, 3, 4),
                      overwrite: bool = False,
                      progress: bool = True,
                      mod: int = 12) -> Summary:
    """Write mod-cropped HR, copy or generate LR for every ``scale`` of every set found; missing sets are
    listed, not errors (unless none is found)."""
    scales = sorted({int(s) for s in scales})
    if mod < 1:
        raise PrepError(f'mod must be a positive integer, got {mod}')
    if not scales or scales[0] < 1:
        raise PrepError(f'scales must be positive integers, got {scales}')
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise PrepError(f'unknown set(s) {unknown}; known: {", ".join(SETS)}')
    found = {name: find_set(src_root, name) for name in sets}
    missing = [name for name, f in found.items() if f is None]
    if len(missing) == len(found):
        raise PrepError(f'none of {", ".join(sets)} found under {src_root}')

    written, generated, copied = 0, 0, 0
    with Timer() as timer:
        for name, where in found.items():
            if where is None:
                continue
            hr_names = list_images(where['hr'])
            hr_out = osp.join(dst_root, name, 'HR')
            os.makedirs(hr_out, exist_ok=True)
            for hr_name in tqdm(hr_names, unit='img', desc=f'{name}', disable=not progress):
                stem, ext = osp.splitext(hr_name)
                hr_img = _read(osp.join(where['hr'], hr_name))
                hr_img = hr_img[:hr_img.shape[0] // mod * mod, :hr_img.shape[1] // mod * mod]
                if _write(osp.join(hr_out, hr_name), hr_img, overwrite):
                    written += 1
                for scale in scales:
                    lr_out = osp.join(dst_root, name, 'LR_bicubic', f'X{scale}', f'{stem}x{scale}{ext}')
                    if osp.exists(lr_out) and not overwrite:
                        continue
                    os.makedirs(osp.dirname(lr_out), exist_ok=True)
                    src_lr = _source_lr(where['lr'][scale], stem, scale) if scale in where['lr'] else None
                    lr_img = _read(src_lr) if src_lr else None
                    if lr_img is not None and lr_img.shape[:2] == (hr_img.shape[0] // scale, hr_img.shape[1] // scale):
                        copied += 1
                    else:
                        lr_img = bicubic_downscale(hr_img, scale)
                        generated += 1
                    cv2.imwrite(lr_out, lr_img)
                    written += 1
    extra = {'sets': ','.join(n for n, f in found.items() if f), 'lr_generated': generated, 'lr_copied': copied}
    if missing:
        extra['not_found'] = ','.join(missing)
    return Summary('benchmark', written, folder_bytes(dst_root), timer.seconds, dst_root, extra)


def _read(path: str):
    from dvmsr_mma.tools.image_io import ImageReadError, read_image  # not at import: dvmsr_mma imports datasets_prep

    try:
        return read_image(path)
    except ImageReadError as err:
        raise PrepError(f'unreadable image: {err}') from None


def _write(path: str, img, overwrite: bool) -> bool:
    if osp.exists(path) and not overwrite:
        return False
    cv2.imwrite(path, img)
    return True


def benchmark_option_snippet(dst_root: str, name: str, scale: int) -> List[str]:
    """YAML lines for a test/val dataset entry using the arranged layout (filename_tmpl '{}x<s>')."""
    base = osp.join(dst_root, name)
    return [f'  test_{name}:', f'    name: {name}', '    type: PairedImageDataset',
            f'    dataroot_gt: {base}/HR', f'    dataroot_lq: {base}/LR_bicubic/X{scale}',
            f"    filename_tmpl: '{{}}x{scale}'", '    io_backend:', '      type: disk']


__all__ = ['arrange_benchmark', 'find_set', 'SETS', 'benchmark_option_snippet']
