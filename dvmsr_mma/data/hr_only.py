"""What the two HR-only ImageNet datasets share: finding their HR images and opening the file client."""
import os.path as osp
from typing import Any, Dict, List, Mapping

from basicsr.data.data_util import paths_from_lmdb
from basicsr.utils import FileClient
from datasets_prep.common import image_files
from dvmsr_mma.errors import OptionError


def hr_paths(opt: Mapping[str, Any], io_backend_opt: Dict[str, Any]) -> List[str]:
    """The HR images of ``opt['dataroot_gt']``: an LMDB's keys (``io_backend_opt`` gets its ``db_paths`` and
    ``client_keys``), else the first field of each ``meta_info_file`` line, else every image in the folder and its
    sub-folders (ImageNet's ``train/<wnid>/*.JPEG``). No folder or no image is one :class:`OptionError` line."""
    where = f'datasets.{opt.get("phase", "train")}'
    root = opt.get('dataroot_gt')
    if not root:
        raise OptionError(f'{where}.dataroot_gt: not set (the HR folder or LMDB)')
    if io_backend_opt['type'] == 'lmdb':
        io_backend_opt['db_paths'] = [root]
        io_backend_opt['client_keys'] = ['gt']
        paths = paths_from_lmdb(root)
    elif opt.get('meta_info_file'):
        with open(opt['meta_info_file']) as fin:
            paths = [osp.join(root, line.split(' ')[0].strip()) for line in fin if line.strip()]
    else:
        if not osp.isdir(root):
            raise OptionError(f'{where}.dataroot_gt: no such folder: {root}')
        paths = image_files(root)
    if not paths:
        raise OptionError(f'{where}.dataroot_gt: no images in {root} (nor its sub-folders)')
    return paths


def open_file_client(io_backend_opt: Mapping[str, Any]) -> FileClient:
    """BasicSR's FileClient for these options, made in the DataLoader worker that first reads (LMDB handles do not
    survive a fork)."""
    io_opt = dict(io_backend_opt)
    return FileClient(io_opt.pop('type'), **io_opt)
