"""Decoding one image file, for ``basicsr infer``, ``lam`` and ``prep``: any failure is one :class:`ImageReadError`
naming the file and why, so a batch reports it and goes on.

OpenCV refuses images past ``CV_IO_MAX_IMAGE_PIXELS`` (2^30 pixels unless the environment variable
``OPENCV_IO_MAX_IMAGE_PIXELS`` says otherwise when the process starts) with a ``cv2.error``, even when only the
header claims that size; the message here gives the image's size from its header and the cap.
"""
import io
import os
from typing import Optional, Tuple

import cv2
import numpy as np

from dvmsr_mma.utils.errors import OptionError

OPENCV_PIXEL_CAP = int(os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS', 1 << 30))


class ImageReadError(OptionError):
    """A file that does not decode to an image; the message is ``<path>: <why>``."""


def header_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the header (Pillow reads headers only; its own decompression-bomb cap is lifted for
    this), None if Pillow cannot tell."""
    from PIL import Image

    cap, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # Pillow raises several types for files it cannot read
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = cap


def decode(data: bytes, name: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """``cv2.imdecode`` of a file's bytes; ImageReadError ``<name>: <why>`` where it gives no image."""
    if not len(data):
        raise ImageReadError(f'{name}: not a readable image (empty file, 0 bytes)')
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as err:
        if 'CV_IO_MAX_IMAGE_PIXELS' in str(err):
            size = header_size(data)
            what = f'{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels' if size else 'too many pixels'
            raise ImageReadError(f'{name}: {what}, past OpenCV\'s decoder cap of {OPENCV_PIXEL_CAP:,} pixels '
                                 '(CV_IO_MAX_IMAGE_PIXELS); start with OPENCV_IO_MAX_IMAGE_PIXELS set higher, or '
                                 'split the image') from None
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ImageReadError(f'{name}: not a readable image (OpenCV: {detail})') from None
    if img is None:
        raise ImageReadError(f'{name}: not a readable image')
    return img


def read_image(path: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode the file at ``path`` (bit depth and alpha kept by default); ImageReadError naming it otherwise."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f'{path}: cannot be read ({err.strerror or err})') from None
    return decode(data.tobytes() if data.size else b'', path, flags)
