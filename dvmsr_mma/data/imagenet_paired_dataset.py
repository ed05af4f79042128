"""``ImageNetPairedDataset``: the official MMA ImageNet pre-training dataset, so its option files run unchanged.

The official MMA option files (``train_MMA_x{2,3,4}_pretrain.yml``) name ``type: ImageNetPairedDataset``, a
dataset of the BasicSR copy vendored in the MMA repository. This one gives the same numbers from the same options:
HR images only (ImageNet's ``train/<wnid>/*.JPEG``), LR made on the fly from the whole image:

1. read the HR image (float32 BGR in [0, 1]) and mod-crop it to a multiple of ``scale``;
2. enlarge it to at least ``gt_size`` on each side with ``cv2.resize`` and its default (bilinear) interpolation;
   the official calls it on every image, where it is a copy unless the image is smaller;
3. ``lq = imresize(gt, 1 / scale)``: BasicSR's MATLAB-style bicubic, on the whole image, not rounded to 8 bits;
4. train: ``paired_random_crop`` to ``gt_size`` and ``augment`` (``use_hflip``, ``use_rot``);
   val / test: the HR cropped to ``scale`` x the LR size, as the official (a no-op after the mod-crop);
5. ``color: y``: the Y channel by ``rgb2ycbcr`` applied to the BGR arrays, as the official does (BasicSR's
   ``PairedImageDataset`` uses ``bgr2ycbcr``, so its Y differs); then ``mean`` / ``std`` normalization.

Output dict: ``lq``, ``gt``, ``gt_path`` as the official, plus ``lq_path`` (= ``gt_path``: BasicSR's validation
names images after it).

Against the package's ``ImageNetPretrainDataset``: that one crops first and resizes only the ``gt_size`` crop,
much cheaper on ImageNet-sized photos (the official runs the pure-PyTorch ``imresize`` on every whole image, every
time it is read), and rounds the LR to 8 bits by default; but its LR patches differ from the official's near the
crop borders (``imresize`` pads at the borders of what it is given) and for enlarged images (bicubic there). Use
``ImageNetPretrainDataset`` for new runs, this one to reproduce the official pre-training.

Paths: an LMDB (``io_backend: {type: lmdb}``, keys from its ``meta_info.txt``), else ``meta_info_file`` (first
field of each line, relative to ``dataroot_gt``), else every image in ``dataroot_gt`` and its sub-folders
(the official lists every file of every sub-folder; hidden files and non-images are skipped here, sorted).
``gt_size`` is required for training; outside training the official reads it as well (it enlarges validation
images too), here without it nothing is enlarged.
"""

import cv2
import numpy as np
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils.color_util import rgb2ycbcr
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY

from dvmsr_mma.data.hr_only import HROnlyDataset
from dvmsr_mma.utils.errors import OptionError


@DATASET_REGISTRY.register()
class ImageNetPairedDataset(HROnlyDataset):
    """HR folder / LMDB -> (MATLAB-bicubic LR of the whole image, HR) pairs, as the official; see the module."""

    def __init__(self, opt):
        self.gt_size = opt.get('gt_size')
        if opt.get('phase') == 'train' and self.gt_size is None:
            raise OptionError('datasets.train.gt_size: not set; add it, e.g. gt_size: 128 (the HR patch size)')
        super().__init__(opt)

    def __getitem__(self, index):
        scale = self.scale
        gt_path, img_gt = self.read_hr(index)  # (h, w, 3) BGR [0, 1]

        h, w = img_gt.shape[:2]
        h, w = h - h % scale, w - w % scale
        img_gt = img_gt[:h, :w, :]  # modcrop
        if self.gt_size is not None:
            # unconditional, as the official: a copy at the same size, bilinear when enlarging
            img_gt = cv2.resize(img_gt, (max(w, self.gt_size), max(h, self.gt_size)))
        img_lq = imresize(img_gt, 1 / scale)  # (h, w, 3) -> (ceil(h / s), ceil(w / s), 3), MATLAB bicubic
        img_gt = np.ascontiguousarray(img_gt, dtype=np.float32)
        img_lq = np.ascontiguousarray(img_lq, dtype=np.float32)

        if self.opt['phase'] == 'train':
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.gt_size, scale, gt_path)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', True))

        if self.opt.get('color') == 'y':  # on the BGR arrays, as the official (see the module docstring)
            img_gt = rgb2ycbcr(img_gt, y_only=True)[..., None]  # (h, w, 3) -> (h, w, 1)
            img_lq = rgb2ycbcr(img_lq, y_only=True)[..., None]

        if self.opt['phase'] != 'train':
            img_gt = img_gt[:img_lq.shape[0] * scale, :img_lq.shape[1] * scale, :]

        return self.pair_dict(img_gt, img_lq, gt_path)
