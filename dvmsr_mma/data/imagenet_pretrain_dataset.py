"""HR-only training data with LR made on the fly (MMA's ImageNet pre-training, sec. 4.1).

``ImageNetPretrainDataset`` reads HR images only, from a folder (searched recursively, so ImageNet's
``train/<wnid>/*.JPEG`` layout works as is) or an LMDB made by ``basicsr lmdb`` / BasicSR's
``make_lmdb_from_imgs``, and makes each LR image with BasicSR's MATLAB-style bicubic ``imresize``:

- train: random ``gt_size`` crop of the HR image first (cheap: only the crop is resized), then flip /
  rotation, then ``lq = imresize(gt, 1 / scale)``. Images smaller than ``gt_size`` are first enlarged to
  it with bicubic interpolation (the official ``ImageNetPairedDataset`` enlarges them too, bilinearly).
- val / test: the whole image, cropped to a multiple of ``scale``.

The official MMA ``ImageNetPairedDataset`` (also registered here, for its option files) makes the LR from the whole
image and crops afterwards: for images of at least ``gt_size`` and ``quantize_lq: false``, the same pairs away from
the crop borders, but much slower; this one is the faster choice.

``quantize_lq`` (default true) rounds the LR image to 8 bits, as the PNG benchmark LR images are, so the
network sees at pre-training what it sees at fine-tuning and test time (MATLAB's ``imresize`` on uint8 does
the same). Output dict as ``PairedImageDataset``: ``lq``, ``gt``, ``lq_path`` (= ``gt_path``: the LR has no
file of its own), ``gt_path``.

Options: ``dataroot_gt``, ``io_backend`` (disk | lmdb), ``meta_info_file`` (optional: one relative path per
line, first field), ``scale``, ``phase``, ``gt_size``, ``use_hflip``, ``use_rot``, ``quantize_lq``,
``mean`` / ``std``.
"""

import cv2
import numpy as np
from basicsr.data.transforms import augment
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY

from dvmsr_mma.data.hr_only import HROnlyDataset


@DATASET_REGISTRY.register()
class ImageNetPretrainDataset(HROnlyDataset):
    """HR folder or LMDB -> (MATLAB-bicubic LR, HR) pairs; see the module docstring."""

    def __getitem__(self, index):
        scale = self.scale
        gt_path, img_gt = self.read_hr(index)  # (h, w, 3) BGR [0, 1]

        if self.opt['phase'] == 'train':
            gt_size = self.opt['gt_size']
            h, w = img_gt.shape[:2]
            if h < gt_size or w < gt_size:
                img_gt = cv2.resize(img_gt, (max(w, gt_size), max(h, gt_size)), interpolation=cv2.INTER_CUBIC)
                h, w = img_gt.shape[:2]
            top, left = np.random.randint(0, h - gt_size + 1), np.random.randint(0, w - gt_size + 1)
            img_gt = img_gt[top:top + gt_size, left:left + gt_size, :]
            img_gt = augment(img_gt, self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
        else:
            h, w = img_gt.shape[:2]
            img_gt = img_gt[:h - h % scale, :w - w % scale, :]  # modcrop

        img_gt = np.ascontiguousarray(np.clip(img_gt, 0, 1), dtype=np.float32)
        img_lq = imresize(img_gt, 1 / scale)  # (h, w, 3) -> (h / s, w / s, 3), MATLAB bicubic with antialiasing
        if self.opt.get('quantize_lq', True):
            img_lq = np.round(np.clip(img_lq, 0, 1) * 255.) / 255.
        img_lq = np.ascontiguousarray(img_lq, dtype=np.float32)

        return self.pair_dict(img_gt, img_lq, gt_path)
