"""ImageNetPairedDataset: the official MMA pre-training dataset (LR from the whole mod-cropped, enlarged image)."""
import cv2
import numpy as np
import pytest
from basicsr.data import build_dataset
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from basicsr.utils.matlab_functions import imresize

from dvmsr_mma.training.checks import check_dataset
from dvmsr_mma.utils.errors import OptionError

SIZES = {'n01/a.JPEG': (50, 70), 'n01/b.png': (25, 25), 'n02/c.png': (10, 13), 'top.png': (40, 40)}


@pytest.fixture
def hr_folder(tmp_path):
    """ImageNet layout, <root>/<class>/<image>, plus an image at the top, a hidden image and a non-image."""
    rng = np.random.default_rng(0)
    root = tmp_path / 'train'
    for rel, (h, w) in {**SIZES, 'n02/.hidden.png': (30, 30)}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (root / 'n02' / 'notes.txt').write_text('not an image')
    return root


def dataset_opt(root, phase='train', scale=2, **extra):
    return {'name': 'ImageNet', 'type': 'ImageNetPairedDataset', 'dataroot_gt': str(root),
            'io_backend': {'type': 'disk'}, 'gt_size': 24, 'use_hflip': True, 'use_rot': True, 'scale': scale,
            'phase': phase, **extra}


def hr(root, rel):
    return cv2.imread(str(root / rel)).astype(np.float32) / 255.  # BGR [0, 1], as imfrombytes(float32=True)


def as_bgr_hwc(t):
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0)[:, :, ::-1])


def item_of(dataset, rel):
    index = [p.replace('\\', '/').endswith(rel) for p in dataset.paths].index(True)
    return dataset[index]


def test_registered_and_lists_images_in_class_folders(hr_folder):
    dataset = build_dataset(dataset_opt(hr_folder))
    assert type(dataset).__name__ == 'ImageNetPairedDataset'
    assert sorted(p[len(str(hr_folder)) + 1:] for p in dataset.paths) == sorted(SIZES)  # no hidden, no .txt


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_train_shapes(hr_folder, scale):
    dataset = build_dataset(dataset_opt(hr_folder, scale=scale, gt_size=12 * scale))
    assert len(dataset) == len(SIZES)
    for i in range(len(dataset)):
        item = dataset[i]
        assert set(item) == {'lq', 'gt', 'lq_path', 'gt_path'} and item['lq_path'] == item['gt_path']
        assert item['gt'].shape == (3, 12 * scale, 12 * scale) and item['lq'].shape == (3, 12, 12)


def test_lq_is_matlab_bicubic_of_the_modcropped_hr(hr_folder):
    """b.png is 25x25: mod-cropped to 24x24 = gt_size, so the crop is the whole image and the LR is not rounded."""
    dataset = build_dataset(dataset_opt(hr_folder, use_hflip=False, use_rot=False))
    item = item_of(dataset, 'n01/b.png')
    gt = hr(hr_folder, 'n01/b.png')[:24, :24]
    np.testing.assert_array_equal(as_bgr_hwc(item['gt']), gt)
    np.testing.assert_allclose(as_bgr_hwc(item['lq']), imresize(gt, 1 / 2), rtol=0, atol=1e-6)
    lq = item['lq'].numpy()
    assert not np.allclose(lq * 255, np.round(lq * 255), atol=1e-4)  # not rounded to 8 bits


def test_lq_comes_from_the_whole_image_then_is_cropped(hr_folder):
    """The LR patch is a crop of imresize(whole image), not imresize(crop): they differ at the patch borders."""
    dataset = build_dataset(dataset_opt(hr_folder, use_hflip=False, use_rot=False))
    whole = hr(hr_folder, 'top.png')  # 40x40
    lq_whole = imresize(whole, 1 / 2)
    for _ in range(5):
        item = item_of(dataset, 'top.png')
        gt, lq = as_bgr_hwc(item['gt']), as_bgr_hwc(item['lq'])
        (top, left), = [(t, l) for t in range(0, 17, 2) for l in range(0, 17, 2)
                        if np.array_equal(whole[t:t + 24, l:l + 24], gt)]
        np.testing.assert_allclose(lq, lq_whole[top // 2:top // 2 + 12, left // 2:left // 2 + 12], rtol=0, atol=1e-6)
        assert not np.allclose(lq, imresize(gt, 1 / 2), atol=1e-4)  # a 24 crop of 40 has inner borders


def test_small_image_is_enlarged_bilinearly_to_gt_size(hr_folder):
    """c.png is 10x13: mod-cropped to 10x12, then cv2.resize (default: bilinear) to 24x24, train and val alike."""
    enlarged = cv2.resize(hr(hr_folder, 'n02/c.png')[:10, :12], (24, 24))
    for phase in ('train', 'val'):
        dataset = build_dataset(dataset_opt(hr_folder, phase=phase, use_hflip=False, use_rot=False))
        item = item_of(dataset, 'n02/c.png')
        np.testing.assert_allclose(as_bgr_hwc(item['gt']), enlarged, rtol=0, atol=1e-6)
        np.testing.assert_allclose(as_bgr_hwc(item['lq']), imresize(enlarged, 1 / 2), rtol=0, atol=1e-6)


def test_val_phase_keeps_the_whole_modcropped_image(hr_folder):
    dataset = build_dataset(dataset_opt(hr_folder, phase='val', scale=3, gt_size=12))
    item = item_of(dataset, 'n01/a.JPEG')  # 50x70 -> 48x69
    assert item['gt'].shape == (3, 48, 69) and item['lq'].shape == (3, 16, 23)
    np.testing.assert_allclose(as_bgr_hwc(item['gt']), hr(hr_folder, 'n01/a.JPEG')[:48, :69], rtol=0, atol=1e-6)
    assert item['lq_path'] == item['gt_path'] and item['gt_path'].endswith('a.JPEG')
    # without gt_size (optional outside training) nothing is enlarged
    dataset = build_dataset({k: v for k, v in dataset_opt(hr_folder, phase='val').items() if k != 'gt_size'})
    assert item_of(dataset, 'n02/c.png')['gt'].shape == (3, 10, 12)


def test_color_y_is_the_officials_formula_on_bgr(hr_folder):
    dataset = build_dataset(dataset_opt(hr_folder, phase='val', color='y'))
    item = item_of(dataset, 'n01/b.png')
    bgr = hr(hr_folder, 'n01/b.png')[:24, :24]
    y = (bgr @ np.array([65.481, 128.553, 24.966]) + 16.) / 255.  # rgb2ycbcr weights on B, G, R, as upstream
    assert item['gt'].shape == (1, 24, 24) and item['lq'].shape == (1, 12, 12)
    np.testing.assert_allclose(item['gt'][0].numpy(), y, rtol=0, atol=1e-5)


def test_mean_std_normalization(hr_folder):
    plain = item_of(build_dataset(dataset_opt(hr_folder, phase='val')), 'n01/b.png')
    normed = item_of(build_dataset(dataset_opt(hr_folder, phase='val', mean=[0.5] * 3, std=[0.25] * 3)), 'n01/b.png')
    np.testing.assert_allclose(normed['gt'].numpy(), (plain['gt'].numpy() - 0.5) / 0.25, atol=1e-5)
    np.testing.assert_allclose(normed['lq'].numpy(), (plain['lq'].numpy() - 0.5) / 0.25, atol=1e-5)


def test_lmdb_backend(hr_folder, tmp_path):
    rel = ['n01/a.JPEG', 'n01/b.png']
    lmdb_path = str(tmp_path / 'hr.lmdb')
    make_lmdb_from_imgs(str(hr_folder), lmdb_path, rel, [r.replace('/', '_').rsplit('.', 1)[0] for r in rel],
                        compress_level=1)
    dataset = build_dataset(dataset_opt(lmdb_path, io_backend={'type': 'lmdb'}, use_hflip=False, use_rot=False))
    assert dataset.paths == ['n01_a', 'n01_b']
    item = dataset[1]
    assert item['gt'].shape == (3, 24, 24) and item['lq'].shape == (3, 12, 12)
    # PNG in the LMDB: the same pixels as the file
    np.testing.assert_array_equal(as_bgr_hwc(item['gt']), hr(hr_folder, 'n01/b.png')[:24, :24])


def test_meta_info_file(hr_folder, tmp_path):
    meta = tmp_path / 'meta.txt'
    meta.write_text('n02/c.png (10,13,3)\ntop.png\n\n')
    dataset = build_dataset(dataset_opt(hr_folder, meta_info_file=str(meta)))
    assert len(dataset) == 2 and dataset.paths[1] == str(hr_folder / 'top.png')
    assert dataset[0]['gt'].shape == (3, 24, 24)


def test_no_images_is_one_option_error(tmp_path):
    with pytest.raises(OptionError, match='no such folder'):
        build_dataset(dataset_opt(tmp_path / 'missing'))
    (tmp_path / 'empty' / 'n01').mkdir(parents=True)
    (tmp_path / 'empty' / 'n01' / '.a.png').write_bytes(b'')
    (tmp_path / 'empty' / 'n01' / 'readme.txt').write_text('x')
    with pytest.raises(OptionError, match=r'datasets\.train\.dataroot_gt: no images in .*empty') as err:
        build_dataset(dataset_opt(tmp_path / 'empty'))
    assert '\n' not in str(err.value)


def test_train_without_gt_size_is_an_option_error(hr_folder):
    opt = dataset_opt(hr_folder)
    del opt['gt_size']
    with pytest.raises(OptionError, match=r'datasets\.train\.gt_size: not set'):
        build_dataset(opt)


def test_preflight_searches_class_folders(tmp_path):
    (tmp_path / 'classes' / 'n01').mkdir(parents=True)
    cv2.imwrite(str(tmp_path / 'classes' / 'n01' / 'a.JPEG'), np.zeros((30, 30, 3), np.uint8))
    check_dataset('datasets.train', dataset_opt(tmp_path / 'classes'), 2)  # images only in a sub-folder: fine
    (tmp_path / 'no_images' / 'n01').mkdir(parents=True)
    with pytest.raises(OptionError, match='no images in .*no_images'):
        check_dataset('datasets.train', dataset_opt(tmp_path / 'no_images'), 2)
