"""Issue 23: bad images never kill a run. A truncated PNG, a zero-byte PNG and a text file named ``.png`` among the
HR images (and, in an LMDB, a key listed in ``meta_info.txt`` without a value), plus grayscale, RGBA and 16-bit pairs:
the run finishes and logs each bad file once; with more bad files than ``max_bad_share`` it stops with one line,
exit 1. ``basicsr prep verify`` decodes every image of a folder; decoding failures in infer are one line each."""
import os
import re

import basicsr.utils.logger
import cv2
import lmdb
import numpy as np
import pytest
import yaml
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from train_runs import run_log, run_train, tiny_dvmsr, write_options

from dvmsr_mma.cli import main
from dvmsr_mma.tools.image_io import ImageReadError, decode

BAD = ('0100', '0101', '0102')  # truncated, zero bytes, text


def _bad_bytes(good_png: bytes):
    return {'0100': good_png[:len(good_png) // 2], '0101': b'', '0102': b'not an image, only text\n'}


def add_bad_and_odd_images(hr_dir, lr_dir):
    """Bad HR files (good LR partners, so the pairs line up), a grayscale, an RGBA and a 16-bit pair."""
    hr0 = cv2.imread(os.path.join(hr_dir, '0000.png'))
    lr0 = cv2.imread(os.path.join(lr_dir, '0000.png'))
    good_png = open(os.path.join(hr_dir, '0000.png'), 'rb').read()
    for name, data in _bad_bytes(good_png).items():
        open(os.path.join(hr_dir, f'{name}.png'), 'wb').write(data)
        cv2.imwrite(os.path.join(lr_dir, f'{name}.png'), lr0)
    cv2.imwrite(os.path.join(hr_dir, '0104.png'), cv2.cvtColor(hr0, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(os.path.join(lr_dir, '0104.png'), cv2.cvtColor(lr0, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(os.path.join(hr_dir, '0105.png'), cv2.cvtColor(hr0, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(os.path.join(lr_dir, '0105.png'), cv2.cvtColor(lr0, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(os.path.join(hr_dir, '0106.png'), hr0.astype(np.uint16) * 257)  # 16-bit
    cv2.imwrite(os.path.join(lr_dir, '0106.png'), lr0.astype(np.uint16) * 257)


def to_lmdb(folder, hr_dir, lr_dir):
    """HR.lmdb / LR.lmdb: the good images through BasicSR's writer; the bad HR values put in raw, listed in
    ``meta_info.txt`` with a plausible shape; and key 0103 listed in HR's meta_info with no value."""
    good = sorted(n for n in os.listdir(hr_dir) if n[:4] not in BAD)
    hr_lmdb, lr_lmdb = str(folder / 'HR.lmdb'), str(folder / 'LR.lmdb')
    make_lmdb_from_imgs(hr_dir, hr_lmdb, good, [n[:-4] for n in good])
    lr_names = sorted(os.listdir(lr_dir))
    cv2.imwrite(os.path.join(lr_dir, '0103.png'), cv2.imread(os.path.join(lr_dir, '0000.png')))
    lr_names.append('0103.png')
    make_lmdb_from_imgs(lr_dir, lr_lmdb, lr_names, [n[:-4] for n in lr_names])
    env = lmdb.open(hr_lmdb, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for name in BAD:
            txn.put(name.encode(), open(os.path.join(hr_dir, f'{name}.png'), 'rb').read())
    env.close()
    with open(os.path.join(hr_lmdb, 'meta_info.txt'), 'a') as f:
        for name in (*BAD, '0103'):
            f.write(f'{name}.png (32,32,3) 1\n')
    return hr_lmdb, lr_lmdb


def bad_run_options(folder, write_pairs, backend, max_bad_share):
    path = write_options(folder, write_pairs, total_iter=40)  # two epochs: every file is drawn
    opt = yaml.safe_load(path.read_text())
    train = opt['datasets']['train']
    add_bad_and_odd_images(train['dataroot_gt'], train['dataroot_lq'])
    bad = list(BAD)
    if backend == 'lmdb':
        hr_lmdb, lr_lmdb = to_lmdb(folder, train['dataroot_gt'], train['dataroot_lq'])
        train.update(dataroot_gt=hr_lmdb, dataroot_lq=lr_lmdb, io_backend={'type': 'lmdb'})
        bad.append('0103')
    train['dataset_enlarge_ratio'] = 3
    if max_bad_share is not None:
        train['max_bad_share'] = max_bad_share
    path.write_text(yaml.safe_dump(opt))
    return path, bad


@pytest.mark.parametrize('backend', ['disk', 'lmdb'])
def test_bad_images_are_skipped_and_logged_once(backend, tmp_path, write_pairs):
    yml, bad = bad_run_options(tmp_path, write_pairs, backend, max_bad_share=0.5)
    result = run_train(tmp_path, yml)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert 'End of training' in result.stderr
    skipped = re.findall(r'skipping a bad image, another sample is drawn: (\S+?): ', result.stderr)
    names = [os.path.basename(s)[:4] for s in skipped]
    assert sorted(names) == sorted(set(names)), 'a bad file was logged more than once'
    assert set(names) == set(bad)


@pytest.mark.parametrize('backend', ['disk', 'lmdb'])
def test_too_many_bad_images_stop_with_one_line(backend, tmp_path, write_pairs):
    yml, _ = bad_run_options(tmp_path, write_pairs, backend, max_bad_share=None)  # default: 1%
    result = run_train(tmp_path, yml)
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if 'more than max_bad_share 0.01' in line]
    assert len(lines) == 1 and 'ERROR' in lines[0] and 'basicsr prep verify' in lines[0]


def test_decode_names_every_kind_of_bad_file(tmp_path):
    png = cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for name, data in _bad_bytes(png).items():
        with pytest.raises(ImageReadError, match=f'^{name}: (not a readable image|empty file)'):
            decode(data, name)


def huge_png(width, height):
    """A PNG whose header claims width x height (the pixel data are a few bytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 16)) + \
        chunk(b'IEND', b'')


def test_image_past_the_pixel_cap_names_the_cap():
    with pytest.raises(ImageReadError, match=r"^big.png: 60000x60000 = 3,600,000,000 pixels, past OpenCV's decoder "
                                             r'cap of 1,073,741,824 pixels \(CV_IO_MAX_IMAGE_PIXELS\)'):
        decode(huge_png(60000, 60000), 'big.png')


def test_prep_verify_decodes_every_image_of_a_folder(tmp_path, write_pairs, capsys):
    from datasets_prep.cli import main as prep
    hr_dir, lr_dir = write_pairs(tmp_path, 3, 32, seed=0)
    assert prep(['verify', '--input', hr_dir, '--quiet']) == 0
    add_bad_and_odd_images(hr_dir, lr_dir)
    (tmp_path / 'HR' / 'big.png').write_bytes(huge_png(60000, 60000))
    capsys.readouterr()
    assert prep(['verify', '--input', hr_dir, '--quiet']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in err if line.startswith('failed: ')]
    assert sorted(line.split(': ')[1] for line in failed) == sorted(
        os.path.join(hr_dir, f'{name}.png') for name in (*BAD, 'big'))
    assert any('CV_IO_MAX_IMAGE_PIXELS' in line for line in failed)
    assert err[-1].startswith('error: ') and '4 of 10 images' in err[-1]


def test_infer_goes_on_after_an_image_past_the_pixel_cap(tmp_path):
    from dvmsr_mma.tools.infer import infer_paths

    class Identity:
        scale = 1

        def enhance(self, img):
            return img
    folder = tmp_path / 'in'
    folder.mkdir()
    (folder / 'a_big.png').write_bytes(huge_png(60000, 60000))
    cv2.imwrite(str(folder / 'b_ok.png'), np.zeros((8, 8, 3), np.uint8))
    written, failed = infer_paths(Identity(), [str(folder / 'a_big.png'), str(folder / 'b_ok.png')],
                                  str(tmp_path / 'out'), progress=False)
    assert [os.path.basename(p) for p in written] == ['b_ok_x1.png']
    assert 'past OpenCV\'s decoder cap' in failed[str(folder / 'a_big.png')]


def test_a_missing_file_is_still_basicsrs_filenotfounderror(tmp_path):
    from basicsr.utils import FileClient

    from dvmsr_mma.training.bad_images import BadImage
    with pytest.raises(FileNotFoundError) as caught:
        FileClient('disk').get(str(tmp_path / 'gone.png'))
    assert isinstance(caught.value, BadImage) and str(caught.value).endswith('gone.png: cannot be read (No such file '
                                                                              'or directory)')


def test_stop_on_bad_images_saves_the_last_iteration(tmp_path, write_pairs):
    """The second bad file of the 10 (max_bad_share 0.15) comes after some iterations: they are saved as on SIGTERM
    and the run resumes from them."""
    from train_runs import run_dir
    yml, _ = bad_run_options(tmp_path, write_pairs, 'disk', max_bad_share=0.15)
    result = run_train(tmp_path, yml)
    assert result.returncode == 1, result.stderr[-3000:]
    saved = re.search(r'saved the training state of iter (\d+); continue with --auto_resume', result.stderr)
    assert saved, result.stderr[-3000:]
    assert (run_dir(tmp_path) / 'training_states' / f'{saved[1]}.state').is_file()
    assert (run_dir(tmp_path) / 'models' / f'net_g_{saved[1]}.pth').is_file()


def _test_options(folder, hr, lr, weights):
    opt = {'name': folder.name, 'model_type': 'SRModel', 'scale': 2, 'num_gpu': 0,
           'datasets': {'test_1': {'name': 'set', 'type': 'PairedImageDataset', 'dataroot_gt': hr, 'dataroot_lq': lr,
                                   'io_backend': {'type': 'disk'}}},
           'network_g': tiny_dvmsr(), 'path': {'pretrain_network_g': str(weights), 'param_key_g': 'params'},
           'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2}}}}
    path = folder / 'test.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


@pytest.fixture
def tiny_weights(tmp_path):
    import torch

    from dvmsr_mma.archs.dvmsr_arch import DVMSR

    torch.manual_seed(0)
    weights = tmp_path / 'net.pth'
    torch.save({'params': DVMSR(**{k: v for k, v in tiny_dvmsr().items() if k != 'type'}).state_dict()}, weights)
    return weights


def test_validation_leaves_a_bad_image_out_and_says_over_how_many(tmp_path, write_pairs, monkeypatch, fresh_logger,
                                                                   tiny_weights):
    """Issue 30: another sample in place of a bad one counted one image twice in the metric. The PSNR with the bad
    image among three is the PSNR of the two good ones alone, and the log says so."""
    both = write_pairs(tmp_path / 'bad', 3, 32, seed=3)
    good = write_pairs(tmp_path / 'good', 2, 32, seed=3)  # the same first two pairs
    good_png = open(os.path.join(both[0], '0002.png'), 'rb').read()
    open(os.path.join(both[0], '0002.png'), 'wb').write(good_png[:len(good_png) // 2])  # truncated
    monkeypatch.chdir(tmp_path)
    logs = {}
    for name, (hr, lr) in (('good', good), ('bad', both)):
        basicsr.utils.logger.initialized_logger.clear()  # a log file per run
        assert main(['test', '-opt', str(_test_options(tmp_path / name, hr, lr, tiny_weights))]) == 0
        logs[name] = run_log(tmp_path / 'results' / name)
    psnr = {name: re.findall(r'# psnr: (\S+)', log)[-1] for name, log in logs.items()}
    assert psnr['bad'] == psnr['good']
    assert 'skipping a bad image, it is left out of the metrics: ' in logs['bad']
    assert 'datasets.test:set: the metrics are averages over 2 of 3 images (1 left out: bad images)' in logs['bad']


def test_validation_with_no_readable_image_stops_with_one_line(tmp_path, write_pairs, monkeypatch, fresh_logger,
                                                                tiny_weights, capsys):
    hr, lr = write_pairs(tmp_path, 1, 32, seed=3)
    open(os.path.join(hr, '0000.png'), 'wb').write(b'')
    monkeypatch.chdir(tmp_path)
    assert main(['test', '-opt', str(_test_options(tmp_path, hr, lr, tiny_weights))]) == 1
    assert 'Traceback' not in capsys.readouterr().err
    last = run_log(tmp_path / 'results' / tmp_path.name).strip().splitlines()[-1]
    assert 'ERROR: datasets.test:set: none of its 1 images can be read' in last
