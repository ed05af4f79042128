"""Check an LMDB the way training will read it, before hours of training find a bad entry.

- every line of ``meta_info.txt`` (``<key>.png (h,w,c) <level>``, key = text before the first dot, as
  BasicSR's ``paired_paths_from_lmdb`` takes it) has a value in the LMDB that ``cv2.imdecode`` turns into
  an image of exactly the recorded shape (c = 1 for grayscale, as BasicSR's writer records it);
- LMDB keys missing from ``meta_info.txt`` are reported too (BasicSR would never read them);
- with ``lr_path`` and ``scale``: HR and LR have the same keys and HR (h, w) == scale × LR (h, w),
  which is what ``PairedImageDataset``'s ``paired_random_crop`` requires.
An image folder (``--input`` without ``data.mdb``) has every image decoded, one ``failed: <path>: <why>`` line
per bad file as it is found (truncated, empty, not an image, past the decoder's pixel cap).
Problems raise ``VerifyError`` whose message names the keys; ``python -m datasets_prep verify`` exits 1.
"""
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from datasets_prep.common import PrepError, Summary, Timer, folder_bytes, list_images, name_list

META_LINE = re.compile(r'^(?P<name>\S+) \((?P<shape>\d+(?:, ?\d+)*)\) (?P<level>\d+)$')


class VerifyError(PrepError):
    """The LMDB(s) are readable but wrong; ``problems`` lists ``(key, what)``."""

    def __init__(self, message: str, problems: List[Tuple[str, str]]):
        super().__init__(message)
        self.problems = problems


def read_meta_info(lmdb_path: str) -> Dict[str, Tuple[int, int, int]]:
    """key -> (h, w, c) from ``meta_info.txt``, keyed exactly as BasicSR keys it."""
    meta = osp.join(lmdb_path, 'meta_info.txt')
    if not osp.isfile(osp.join(lmdb_path, 'data.mdb')):
        raise PrepError(f'not an LMDB folder (no data.mdb): {lmdb_path}')
    if not osp.isfile(meta):
        raise PrepError(f'{lmdb_path} has no meta_info.txt (incomplete conversion?)')
    shapes = {}
    with open(meta) as f:
        for number, line in enumerate(f, start=1):
            match = META_LINE.match(line.strip())
            if not match:
                raise PrepError(f'{meta}:{number}: not "<name> (h,w,c) <level>": {line.strip()!r}')
            dims = tuple(int(d) for d in match['shape'].replace(' ', '').split(','))
            shapes[match['name'].split('.')[0]] = dims if len(dims) == 3 else (*dims, 1)
    if not shapes:
        raise PrepError(f'{meta} is empty')
    return shapes


def _check_one(lmdb_path: str, progress: bool) -> Tuple[Dict[str, Tuple[int, int, int]], List[Tuple[str, str]]]:
    import lmdb
    shapes = read_meta_info(lmdb_path)
    problems = []
    env = lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False, meminit=False)
    try:
        with env.begin(write=False) as txn:
            for key, shape in tqdm(shapes.items(), unit='img', desc=f'verify {osp.basename(lmdb_path)}',
                                   disable=not progress):
                value = txn.get(key.encode('ascii'))
                if value is None:
                    problems.append((key, 'missing from the LMDB'))
                    continue
                img = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
                if img is None:
                    problems.append((key, 'does not decode'))
                    continue
                got = img.shape if img.ndim == 3 else (*img.shape, 1)
                if tuple(got) != shape:
                    problems.append((key, f'shape {got} != meta_info {shape}'))
            extra = [k.decode('ascii', 'replace') for k in txn.cursor().iternext(keys=True, values=False)
                     if k.decode('ascii', 'replace') not in shapes]
            problems += [(k, 'in the LMDB but not in meta_info.txt') for k in extra]
    finally:
        env.close()
    return shapes, problems


def _raise(problems: List[Tuple[str, str]], where: str) -> None:
    kinds: Dict[str, List[str]] = {}
    examples: Dict[str, str] = {}
    for key, what in problems:
        kind = 'wrong shape' if what.startswith('shape') else what
        kinds.setdefault(kind, []).append(key)
        examples.setdefault(kind, f' (e.g. {key}: {what.split(": ", 1)[-1]})' if kind == 'wrong shape' else '')
    detail = '; '.join(f'{what}: {name_list(keys)}{examples[what]}' for what, keys in kinds.items())
    raise VerifyError(f'{where}: {len(problems)} problem(s): {detail}', problems)


def verify_folder(folder: str, progress: bool = True) -> Summary:
    """Decode every image directly in ``folder``; raises ``VerifyError`` naming the bad ones."""
    from dvmsr_mma.tools.image_io import ImageReadError, read_image  # not at import: dvmsr_mma imports datasets_prep

    names = list_images(folder)
    bad = []
    with Timer() as timer:
        for name in tqdm(names, unit='img', desc=f'verify {osp.basename(folder.rstrip("/"))}', disable=not progress):
            try:
                read_image(osp.join(folder, name))
            except ImageReadError as err:
                tqdm.write(f'failed: {err}', file=sys.stderr)
                bad.append(name)
    if bad:
        raise VerifyError(f'{folder}: {len(bad)} of {len(names)} images do not decode: {name_list(bad)}',
                          [(name, 'does not decode') for name in bad])
    return Summary('verify', len(names), folder_bytes(folder), timer.seconds, folder, {})


def verify_lmdb(lmdb_path: str, lr_path: Optional[str] = None, scale: Optional[int] = None,
                progress: bool = True) -> Summary:
    """Verify one LMDB, or an HR/LR pair with ``lr_path`` and ``scale``; raises ``VerifyError`` on problems. A
    folder that is not an LMDB is checked by :func:`verify_folder`."""
    if (lr_path is None) != (scale is None):
        raise PrepError('--lr and --scale go together')
    is_lmdb = osp.isfile(osp.join(lmdb_path, 'data.mdb')) or lmdb_path.rstrip('/').endswith('.lmdb')
    if osp.isdir(lmdb_path) and not is_lmdb:
        if lr_path is not None:
            raise PrepError('--lr and --scale check LMDBs; for an image folder give --input only')
        return verify_folder(lmdb_path, progress)
    with Timer() as timer:
        shapes, problems = _check_one(lmdb_path, progress)
        if problems:
            _raise(problems, lmdb_path)
        count, total = len(shapes), folder_bytes(lmdb_path)
        if lr_path is not None:
            lr_shapes, lr_problems = _check_one(lr_path, progress)
            if lr_problems:
                _raise(lr_problems, lr_path)
            pair = [(k, 'only in HR') for k in sorted(set(shapes) - set(lr_shapes))]
            pair += [(k, 'only in LR') for k in sorted(set(lr_shapes) - set(shapes))]
            for key in sorted(set(shapes) & set(lr_shapes)):
                (h, w, _), (lh, lw, _) = shapes[key], lr_shapes[key]
                if (h, w) != (lh * scale, lw * scale):
                    pair.append((key, f'HR {h}x{w} != {scale} x LR {lh}x{lw}'))
            if pair:
                _raise([(k, w if w.startswith('only') else f'shape: {w}') for k, w in pair],
                       f'{lmdb_path} vs {lr_path} (x{scale})')
            count, total = count + len(lr_shapes), total + folder_bytes(lr_path)
    extra = {'pair': f'x{scale} OK'} if lr_path else {}
    return Summary('verify', count, total, timer.seconds, lmdb_path, extra)


__all__ = ['verify_lmdb', 'verify_folder', 'read_meta_info', 'VerifyError']
