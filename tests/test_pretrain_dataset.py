"""ImageNetPretrainDataset: HR folder (nested) or LMDB -> on-the-fly MATLAB-bicubic LR pairs."""
import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from basicsr.utils.matlab_functions import imresize

from dvmsr_mma.utils.errors import OptionError


@pytest.fixture
def hr_folder(tmp_path):
    """ImageNet layout: <root>/<class>/<image>; one image smaller than the crop."""
    rng = np.random.default_rng(0)
    root = tmp_path / 'train'
    sizes = {'n01/a.JPEG': (50, 70), 'n01/b.png': (40, 41), 'n02/c.JPEG': (20, 30)}
    for rel, (h, w) in sizes.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def dataset_opt(root, phase='train', scale=2, **extra):
    return {'name': 'imagenet', 'type': 'ImageNetPretrainDataset', 'dataroot_gt': str(root),
            'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': True, 'scale': scale,
            'phase': phase, **extra}


def as_bgr_hwc(t):
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0)[:, :, ::-1])


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_train_pairs_are_matlab_bicubic_of_the_crop(hr_folder, scale):
    dataset = build_dataset(dataset_opt(hr_folder, scale=scale, gt_size=12 * scale))
    assert len(dataset) == 3
    for i in range(len(dataset)):
        item = dataset[i]
        assert set(item) == {'lq', 'gt', 'lq_path', 'gt_path'} and item['lq_path'] == item['gt_path']
        assert item['gt'].shape == (3, 12 * scale, 12 * scale) and item['lq'].shape == (3, 12, 12)
        expected = np.round(np.clip(imresize(as_bgr_hwc(item['gt']), 1 / scale), 0, 1) * 255) / 255
        np.testing.assert_allclose(as_bgr_hwc(item['lq']), expected, atol=1e-6)
        assert torch.all(item['lq'] * 255 == torch.round(item['lq'] * 255))  # 8-bit LR, like benchmark PNGs


def test_val_phase_uses_the_whole_modcropped_image(hr_folder):
    dataset = build_dataset(dataset_opt(hr_folder, phase='val', scale=3, quantize_lq=False))
    shapes = sorted(tuple(dataset[i]['gt'].shape[1:]) for i in range(len(dataset)))
    assert shapes == [(18, 30), (39, 39), (48, 69)]
    item = dataset[0]
    assert item['lq'].shape[1:] == (item['gt'].shape[1] // 3, item['gt'].shape[2] // 3)


def test_lmdb_backend(hr_folder, tmp_path):
    rel = ['n01/a.JPEG', 'n01/b.png']
    lmdb_path = str(tmp_path / 'hr.lmdb')
    make_lmdb_from_imgs(str(hr_folder), lmdb_path, rel, [r.replace('/', '_').rsplit('.', 1)[0] for r in rel],
                        compress_level=1)
    dataset = build_dataset(dict(dataset_opt(lmdb_path), io_backend={'type': 'lmdb'}))
    assert len(dataset) == 2
    item = dataset[1]
    assert item['gt'].shape == (3, 32, 32) and item['lq'].shape == (3, 16, 16)


def test_empty_or_missing_folder_is_an_option_error(tmp_path):
    with pytest.raises(OptionError, match='no such folder'):
        build_dataset(dataset_opt(tmp_path / 'missing'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(OptionError, match='no images'):
        build_dataset(dataset_opt(tmp_path / 'empty'))
