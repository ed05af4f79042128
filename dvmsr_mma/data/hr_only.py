"""What the two HR-only ImageNet datasets share: options, finding the HR images, reading one, the output dict."""
import os.path as osp
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
from basicsr.data.data_util import paths_from_lmdb
from basicsr.utils import FileClient, imfrombytes, img2tensor
from torch.utils import data
from torchvision.transforms.functional import normalize

from datasets_prep.common import image_files
from dvmsr_mma.utils.errors import OptionError


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


class HROnlyDataset(data.Dataset):
    """Base of the datasets that read HR images only and make the LR from them: subclasses turn
    :meth:`read_hr`'s image into a pair and return :meth:`pair_dict` of it."""

    def __init__(self, opt: Mapping[str, Any]):
        super().__init__()
        self.opt = opt
        self.file_client = None  # made in the DataLoader worker that first reads (LMDB handles do not survive fork)
        self.io_backend_opt = dict(opt['io_backend'])
        self.mean, self.std = opt.get('mean'), opt.get('std')
        self.scale = opt['scale']
        self.paths = hr_paths(opt, self.io_backend_opt)

    def read_hr(self, index: int) -> Tuple[str, np.ndarray]:
        """(path, image as float32 BGR in [0, 1], (h, w, 3))."""
        if self.file_client is None:
            io_opt = dict(self.io_backend_opt)
            self.file_client = FileClient(io_opt.pop('type'), **io_opt)
        path = self.paths[index]
        return path, imfrombytes(self.file_client.get(path, 'gt'), float32=True)

    def pair_dict(self, img_gt: np.ndarray, img_lq: np.ndarray, path: str) -> Dict[str, Any]:
        """PairedImageDataset's output: CHW RGB tensors (normalized by ``mean`` / ``std`` if set); ``lq_path`` is the
        HR path, since the LR has no file of its own (BasicSR's validation names images after it)."""
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)  # HWC BGR -> CHW RGB
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': path, 'gt_path': path}

    def __len__(self) -> int:
        return len(self.paths)
