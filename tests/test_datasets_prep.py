"""datasets_prep: BasicSR-identical sub-images and bicubic LR, LMDBs BasicSR reads, verify, safety, CLI."""
import os
import os.path as osp
import signal
import subprocess
import sys
import textwrap

import cv2
import lmdb
import numpy as np
import pytest

from datasets_prep import PrepError, VerifyError, arrange_benchmark, extract_subimages, make_lmdb, make_lr, verify_lmdb
from datasets_prep.cli import main

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _write_images(folder, sizes, seed=0, prefix=''):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i, (h, w) in enumerate(sizes):
        name = f'{prefix}{i:04d}.png'
        # smooth-ish content so PNG sizes are realistic
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(osp.join(folder, name), img)
        names.append(name)
    return names


def _expected_positions(length, crop, step, thresh):
    """BasicSR's extract_subimages.py, written independently: arange, then the last tile if it is far enough."""
    space = np.arange(0, length - crop + 1, step)
    if length - (space[-1] + crop) > thresh:
        space = np.append(space, length - crop)
    return [int(s) for s in space]


@pytest.mark.parametrize('crop,step,thresh', [(32, 20, 0), (32, 16, 5), (40, 40, 100)])
def test_extract_subimages_matches_basicsr(tmp_path, crop, step, thresh):
    src, dst = str(tmp_path / 'hr'), str(tmp_path / 'sub')
    sizes = [(100, 130), (64, 64), (41, 77)]
    _write_images(src, sizes)
    os.rename(osp.join(src, '0002.png'), osp.join(src, '0002x4.png'))  # DIV2K LR naming: 'x4' dropped
    summary = extract_subimages(src, dst, crop, step, thresh, n_thread=2, progress=False)

    expected = {}
    for stem, (h, w) in zip(('0000', '0001', '0002'), sizes):
        src_name = stem + ('x4' if stem == '0002' else '') + '.png'
        img = cv2.imread(osp.join(src, src_name), cv2.IMREAD_UNCHANGED)
        index = 0
        for top in _expected_positions(h, crop, step, thresh):
            for left in _expected_positions(w, crop, step, thresh):
                index += 1
                expected[f'{stem}_s{index:03d}.png'] = img[top:top + crop, left:left + crop]
    assert sorted(os.listdir(dst)) == sorted(expected)
    assert summary.images == len(expected)
    for name, tile in expected.items():
        np.testing.assert_array_equal(cv2.imread(osp.join(dst, name), cv2.IMREAD_UNCHANGED), tile)


def test_extract_subimages_lr_scale_defaults_and_existing_output(tmp_path):
    src, dst = str(tmp_path / 'lr'), str(tmp_path / 'lr_sub')
    _write_images(src, [(339, 510)])  # a DIV2K x4 LR size
    summary = extract_subimages(src, dst, scale=4, n_thread=1, progress=False)  # 120/60/0
    rows, cols = len(_expected_positions(339, 120, 60, 0)), len(_expected_positions(510, 120, 60, 0))
    assert summary.images == rows * cols == len(os.listdir(dst))
    with pytest.raises(PrepError, match='overwrite'):
        extract_subimages(src, dst, scale=4, progress=False)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_make_lr_is_basicsr_imresize_bit_exact(tmp_path, scale):
    from basicsr.data.transforms import mod_crop
    from basicsr.utils.matlab_functions import imresize
    hr_dir, lr_dir = str(tmp_path / 'hr'), str(tmp_path / 'lr')
    names = _write_images(hr_dir, [(50, 47), (37, 64)])
    make_lr(hr_dir, lr_dir, scale, n_thread=2, progress=False)
    assert sorted(os.listdir(lr_dir)) == names  # same name as the HR file
    for name in names:
        hr = mod_crop(cv2.imread(osp.join(hr_dir, name)), scale)
        ref = np.clip(imresize(hr.astype(np.float32) / 255., 1 / scale) * 255., 0, 255).round().astype(np.uint8)
        lr = cv2.imread(osp.join(lr_dir, name), cv2.IMREAD_UNCHANGED)
        assert lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
        np.testing.assert_array_equal(lr, ref)
    make_lr(hr_dir, str(tmp_path / 'lr_sfx'), scale, suffix=f'x{scale}', n_thread=1, progress=False)
    assert sorted(os.listdir(tmp_path / 'lr_sfx')) == [n.replace('.png', f'x{scale}.png') for n in names]


@pytest.fixture
def paired_lmdbs(tmp_path):
    hr_dir, lr_dir = str(tmp_path / 'hr_sub'), str(tmp_path / 'lr_sub')
    _write_images(hr_dir, [(48, 48)] * 4 + [(64, 48)])
    make_lr(hr_dir, lr_dir, 4, n_thread=1, progress=False)
    hr_lmdb, lr_lmdb = str(tmp_path / 'hr_sub.lmdb'), str(tmp_path / 'lr_sub_X4.lmdb')
    make_lmdb(hr_dir, hr_lmdb, progress=False)
    make_lmdb(lr_dir, lr_lmdb, progress=False)
    return hr_lmdb, lr_lmdb


def test_lmdbs_read_by_basicsr_paired_dataset(paired_lmdbs):
    from basicsr.data import build_dataset
    hr_lmdb, lr_lmdb = paired_lmdbs
    assert verify_lmdb(hr_lmdb, lr_lmdb, 4, progress=False).images == 10  # before BasicSR holds the env open
    with open(osp.join(hr_lmdb, 'meta_info.txt')) as f:
        assert f.readline().strip() == '0000.png (48,48,3) 1'
    opt = dict(name='t', type='PairedImageDataset', dataroot_gt=hr_lmdb, dataroot_lq=lr_lmdb,
               io_backend=dict(type='lmdb'), phase='train', scale=4, gt_size=32, use_hflip=True, use_rot=True,
               filename_tmpl='{}')
    dataset = build_dataset(opt)
    assert len(dataset) == 5
    for i in range(len(dataset)):
        item = dataset[i]
        assert tuple(item['gt'].shape) == (3, 32, 32) and tuple(item['lq'].shape) == (3, 8, 8)


def test_verify_catches_corrupt_missing_and_mismatch(paired_lmdbs, tmp_path, capsys):
    hr_lmdb, lr_lmdb = paired_lmdbs
    with pytest.raises(VerifyError, match='wrong shape: .*0004'):
        verify_lmdb(hr_lmdb, lr_lmdb, 2, progress=False)
    env = lmdb.open(lr_lmdb, map_size=2**26)
    with env.begin(write=True) as txn:
        txn.put(b'0001', b'not a png')
        txn.delete(b'0003')
    env.close()
    with pytest.raises(VerifyError, match='does not decode: 0001') as err:
        verify_lmdb(lr_lmdb, progress=False)
    assert 'missing from the LMDB: 0003' in str(err.value)
    assert main(['verify', '--input', hr_lmdb, '--lr', lr_lmdb, '--scale', '4', '--quiet']) == 1
    assert '0001' in capsys.readouterr().err


def test_overwrite(tmp_path):
    a, b, out = str(tmp_path / 'a'), str(tmp_path / 'b'), str(tmp_path / 'x.lmdb')
    _write_images(a, [(16, 16)] * 2)
    _write_images(b, [(16, 16)] * 3, prefix='b')
    make_lmdb(a, out, progress=False)
    with pytest.raises(PrepError, match='already exists; use --overwrite'):
        make_lmdb(b, out, progress=False)
    make_lmdb(b, out, overwrite=True, progress=False)
    with open(osp.join(out, 'meta_info.txt')) as f:
        assert [line.split('.')[0] for line in f] == ['b0000', 'b0001', 'b0002']
    assert [n for n in os.listdir(tmp_path) if n.startswith('.')] == []  # no partial/old folder left
    not_lmdb = tmp_path / 'y.lmdb'
    not_lmdb.mkdir()
    (not_lmdb / 'precious.txt').write_text('keep me')
    with pytest.raises(PrepError, match='not an LMDB folder'):
        make_lmdb(a, str(not_lmdb), overwrite=True, progress=False)


def test_unreadable_images_named(tmp_path, capsys):
    src = str(tmp_path / 'src')
    _write_images(src, [(16, 16)] * 2)
    with open(osp.join(src, 'broken.png'), 'wb') as f:
        f.write(b'\x89PNG garbage')
    out = str(tmp_path / 'o.lmdb')
    assert main(['make_lmdb', '--input', src, '--output', out, '--quiet']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'broken.png' in err
    assert not osp.exists(out)


def test_killed_conversion_leaves_nothing_at_destination(tmp_path):
    src, out = str(tmp_path / 'src'), str(tmp_path / 'slow.lmdb')
    _write_images(src, [(16, 16)] * 200)
    script = textwrap.dedent(f"""
        import sys, time
        import dvmsr_mma
        from basicsr.utils import lmdb_util
        read, calls = lmdb_util.read_img_worker, []
        def slow_read(*args):  # BasicSR reads each image just before writing it: slow the loop down
            calls.append(1)
            if len(calls) == 20:
                print('writing', file=sys.__stdout__, flush=True)  # make_lmdb silences stdout
            time.sleep(0.02)
            return read(*args)
        lmdb_util.read_img_worker = slow_read
        from datasets_prep import make_lmdb
        make_lmdb({src!r}, {out!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'writing'  # 20 of 200 images written, ~4 s to go
    assert any(n.startswith('.slow.lmdb.partial') for n in os.listdir(tmp_path))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not osp.exists(out)
    make_lmdb(src, out, progress=False)  # a later run is not disturbed by the dead run's partial folder
    assert verify_lmdb(out, progress=False).images == 200


def test_cli_errors_are_one_line(tmp_path, capsys):
    for argv in (['make_lmdb', '--input', str(tmp_path / 'nope'), '--output', str(tmp_path / 'o.lmdb')],
                 ['make_lr', '--input', str(tmp_path), '--output', str(tmp_path / 'lr')],
                 ['frobnicate'],
                 ['verify', '--input', str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('error: '), err


def test_cli_module_entry(tmp_path):
    src = str(tmp_path / 'src')
    _write_images(src, [(16, 16)])
    out = subprocess.run([sys.executable, '-m', 'datasets_prep', 'make_lmdb', '--input', src, '--output',
                          str(tmp_path / 'm.lmdb'), '--quiet'], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith('make_lmdb: 1 images')


def test_benchmark_layout(tmp_path):
    src = tmp_path / 'downloads'
    _write_images(str(src / 'Set5' / 'GTmod12'), [(24, 36), (36, 24)])
    _write_images(str(src / 'BSD100'), [(30, 30)])
    lr_given = src / 'Set5' / 'LRbicx2'
    lr_given.mkdir()
    cv2.imwrite(str(lr_given / '0000.png'), np.full((12, 18, 3), 7, np.uint8))
    dst = str(tmp_path / 'benchmark')
    summary = arrange_benchmark(str(src), dst, scales=(2, 4), progress=False)
    assert summary.extra['not_found'] == 'Set14,Urban100,Manga109'
    for name, imgs in (('Set5', ['0000.png', '0001.png']), ('B100', ['0000.png'])):
        assert sorted(os.listdir(osp.join(dst, name, 'HR'))) == imgs
        for s in (2, 4):
            assert sorted(os.listdir(osp.join(dst, name, 'LR_bicubic', f'X{s}'))) == [
                i.replace('.png', f'x{s}.png') for i in imgs]  # EDSR naming, filename_tmpl '{}x<s>'
    assert cv2.imread(osp.join(dst, 'Set5', 'LR_bicubic', 'X2', '0000x2.png'))[0, 0, 0] == 7  # copied, not made
    assert cv2.imread(osp.join(dst, 'B100', 'HR', '0000.png')).shape == (24, 24, 3)  # 30 mod-cropped to 12
    assert cv2.imread(osp.join(dst, 'B100', 'LR_bicubic', 'X4', '0000x4.png')).shape == (6, 6, 3)


def test_benchmark_layout_pairs_with_the_test_options(tmp_path):
    import yaml
    from basicsr.data import build_dataset
    _write_images(str(tmp_path / 'src' / 'Set5' / 'HR'), [(24, 24), (36, 50)])
    dst = tmp_path / 'benchmark'
    arrange_benchmark(str(tmp_path / 'src'), str(dst), sets=('Set5', ), scales=(4, ), progress=False)
    with open('options/test_dvmsr_x4.yml') as f:
        dataset_opt = next(d for d in yaml.safe_load(f)['datasets'].values() if d['name'] == 'Set5')
    dataset_opt.update(phase='test', scale=4, dataroot_gt=str(dst / 'Set5' / 'HR'),
                       dataroot_lq=str(dst / 'Set5' / 'LR_bicubic' / 'X4'))
    dataset = build_dataset(dataset_opt)
    assert sorted(tuple(dataset[i]['lq'].shape) for i in range(len(dataset))) == [(3, 6, 6), (3, 9, 12)]
