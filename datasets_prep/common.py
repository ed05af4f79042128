"""Pieces every step shares: the error type, image listing, the one-line summary.

Nothing here imports ``basicsr``: the steps import it lazily, after ``dvmsr_mma`` (which patches basicsr
1.4.2 for current torchvision), so ``import datasets_prep`` stays cheap and never breaks on its own.
"""
import os
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Iterator, List

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


class PrepError(ValueError):
    """Bad input or a refused action (missing folder, existing output, unreadable image, ...).

    ``datasets_prep.cli.main`` prints it as one ``error: ...`` line and returns 2.
    """


def list_images(folder: str) -> List[str]:
    """Sorted image file names (not paths) directly inside ``folder``; no recursion, as BasicSR's scripts."""
    if not osp.isdir(folder):
        raise PrepError(f'input folder not found: {folder}')
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMG_EXTENSIONS) and osp.isfile(osp.join(folder, n)))
    if not names:
        raise PrepError(f'no images ({", ".join(IMG_EXTENSIONS)}) in {folder}')
    return names


def iter_image_files(root: str) -> Iterator[str]:
    """Image files in ``root`` and its sub-folders (full paths, in walk order); hidden files and folders skipped.

    Not BasicSR's ``scandir(recursive=True)``, which takes a hidden file (``.DS_Store``) for a folder and fails."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith('.')]
        yield from (osp.join(folder, name) for name in files
                    if not name.startswith('.') and name.lower().endswith(IMG_EXTENSIONS))


def image_files(root: str) -> List[str]:
    """:func:`iter_image_files`, sorted."""
    return sorted(iter_image_files(root))


def name_list(names: List[str], limit: int = 10) -> str:
    """``a, b, c`` or ``a, b, ... (+N more)`` for error messages that name files or keys."""
    shown = ', '.join(names[:limit])
    return shown if len(names) <= limit else f'{shown}, ... (+{len(names) - limit} more)'


def folder_bytes(path: str) -> int:
    """Total size of the files under ``path`` (a file's own size if it is one)."""
    if osp.isfile(path):
        return osp.getsize(path)
    return sum(osp.getsize(osp.join(root, n)) for root, _, files in os.walk(path) for n in files)


@dataclass
class Summary:
    """What a step did; ``str()`` is the one-line summary printed at the end of every step."""
    step: str
    images: int
    bytes: int
    seconds: float
    output: str
    extra: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float('inf')

    def __str__(self) -> str:
        extra = ''.join(f', {k}={v}' for k, v in self.extra.items())
        return (f'{self.step}: {self.images} images, {self.bytes / 2**20:.1f} MiB, {self.seconds:.1f} s '
                f'({self.images_per_second:.1f} img/s){extra} -> {self.output}')


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> 'Timer':
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
