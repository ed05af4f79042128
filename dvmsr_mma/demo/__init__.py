"""The embedded default job: build tiny LMDBs, train, test and compare with bicubic, all on CPU.

The images are scikit-image's bundled samples, so nothing is downloaded. Every step goes through the tools
a user runs by hand (``datasets_prep``'s sub-images, bicubic LR and LMDB, then ``basicsr train`` and
``basicsr test`` in a subprocess), so the demo exercises them end to end.
"""
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import cv2
import numpy as np
import yaml
from skimage import data as skdata

TRAIN_IMAGES = ('astronaut', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'camera', 'brick',
                'grass', 'gravel', 'moon')
VAL_IMAGES = ('chelsea', 'coffee')
TEMPLATE = osp.join(osp.dirname(__file__), 'train_demo_x2.yml')


def _save_samples(names: Tuple[str, ...], folder: str) -> None:
    """Write the samples as BGR PNGs, mod-cropped to 12 so they pair with LR at x2, x3 and x4."""
    os.makedirs(folder, exist_ok=True)
    for name in names:
        img = getattr(skdata, name)()  # (h, w, 3) RGB or (h, w) gray, uint8
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[:img.shape[0] // 12 * 12, :img.shape[1] // 12 * 12]
        cv2.imwrite(osp.join(folder, f'{name}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def build_data(root: str, scale: int) -> Dict[str, str]:
    """Sub-image, bicubic-LR and LMDB the training samples; keep the validation pair as folders."""
    from datasets_prep.extract_subimages import extract_subimages
    from datasets_prep.make_lmdb import make_lmdb
    from datasets_prep.make_lr import make_lr

    src = osp.join(root, 'samples')
    paths = {
        'train_hr': osp.join(root, 'train_HR_sub.lmdb'),
        'train_lr': osp.join(root, f'train_LR_sub_X{scale}.lmdb'),
        'val_hr': osp.join(root, 'samples', 'val'),
        'val_lr': osp.join(root, f'val_LR_X{scale}'),
    }
    if all(osp.exists(osp.join(p, 'meta_info.txt')) for p in (paths['train_hr'], paths['train_lr'])):
        return paths  # built by an earlier run
    _save_samples(TRAIN_IMAGES, osp.join(src, 'train'))
    _save_samples(VAL_IMAGES, paths['val_hr'])
    hr_sub, lr_sub = osp.join(root, 'train_HR_sub'), osp.join(root, f'train_LR_sub_X{scale}')
    extract_subimages(osp.join(src, 'train'), hr_sub, crop_size=192, step=96, thresh_size=0, overwrite=True)
    for hr_dir, lr_dir in ((hr_sub, lr_sub), (paths['val_hr'], paths['val_lr'])):
        make_lr(hr_dir, lr_dir, scale, overwrite=True)
    make_lmdb(hr_sub, paths['train_hr'], overwrite=True)
    make_lmdb(lr_sub, paths['train_lr'], overwrite=True)
    return paths


def write_options(root: str, paths: Dict[str, str], iters: int) -> Tuple[str, str]:
    """Fill the embedded train template with the data paths and derive the matching test options."""
    with open(TEMPLATE, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    datasets = opt['datasets']
    datasets['train'].update(dataroot_gt=paths['train_hr'], dataroot_lq=paths['train_lr'])
    datasets['val'].update(dataroot_gt=paths['val_hr'], dataroot_lq=paths['val_lr'])
    train = opt['train']
    train['total_iter'] = iters
    train['scheduler']['milestones'] = [int(iters * 2 / 3), int(iters * 7 / 8)]
    opt['val']['val_freq'] = opt['logger']['save_checkpoint_freq'] = iters

    test = {
        'name': f"{opt['name']}_test",
        'model_type': opt['model_type'],
        'scale': opt['scale'],
        'num_gpu': opt['num_gpu'],
        'manual_seed': opt['manual_seed'],
        'datasets': {'test_1': datasets['val']},
        'network_g': opt['network_g'],
        'path': {
            'pretrain_network_g': osp.join(root, 'experiments', opt['name'], 'models', 'net_g_latest.pth'),
            'param_key_g': 'params_ema',
            'strict_load_g': True,
        },
        'val': {'save_img': True, 'suffix': None, 'metrics': opt['val']['metrics']},
    }
    train_yml, test_yml = osp.join(root, 'train_demo.yml'), osp.join(root, 'test_demo.yml')
    for path, content in ((train_yml, opt), (test_yml, test)):
        with open(path, 'w', encoding='utf-8') as f:
            yaml.safe_dump(content, f, sort_keys=False)
    return train_yml, test_yml


def _basicsr(args: List[str], cwd: str) -> None:
    subprocess.run([sys.executable, '-m', 'dvmsr_mma', *args], cwd=cwd, check=True)


def psnr_table(paths: Dict[str, str], sr_dir: str, suffix: str, scale: int) -> List[Tuple[str, float, float]]:
    """Y-channel PSNR (BasicSR's metric, border ``scale``) of the network and of MATLAB-style bicubic."""
    from basicsr.metrics import calculate_psnr
    from basicsr.utils.matlab_functions import imresize

    rows = []
    for name in sorted(os.listdir(paths['val_hr'])):
        stem = osp.splitext(name)[0]
        hr = cv2.imread(osp.join(paths['val_hr'], name))
        lr = cv2.imread(osp.join(paths['val_lr'], name)).astype(np.float32) / 255.
        bicubic = np.clip(imresize(lr, scale) * 255., 0, 255).round().astype(np.uint8)
        sr = cv2.imread(osp.join(sr_dir, f'{stem}_{suffix}.png'))
        kwargs = dict(crop_border=scale, test_y_channel=True)
        rows.append((stem, calculate_psnr(sr, hr, **kwargs), calculate_psnr(bicubic, hr, **kwargs)))
    return rows


def run(workdir: str, iters: int) -> int:
    """Build data, train, test and print the PSNR of the trained network against bicubic."""
    workdir = osp.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    paths = build_data(osp.join(workdir, 'datasets'), scale=2)
    train_yml, test_yml = write_options(workdir, paths, iters)
    _basicsr(['train', '-opt', train_yml], cwd=workdir)
    _basicsr(['test', '-opt', test_yml], cwd=workdir)
    with open(test_yml, encoding='utf-8') as f:
        test_name = yaml.safe_load(f)['name']
    sr_dir = osp.join(workdir, 'results', test_name, 'visualization', 'demo_val')
    rows = psnr_table(paths, sr_dir, suffix=test_name, scale=2)
    print(f'\nx2 Y-PSNR on {len(rows)} held-out images after {iters} iterations ({time.time() - start:.0f} s):')
    print(f"{'image':<12} {'network':>8} {'bicubic':>8}")
    for stem, net, bic in rows:
        print(f'{stem:<12} {net:8.2f} {bic:8.2f}')
    net_mean, bic_mean = (float(np.mean([r[i] for r in rows])) for i in (1, 2))
    print(f"{'mean':<12} {net_mean:8.2f} {bic_mean:8.2f}   ({net_mean - bic_mean:+.2f} dB over bicubic)")
    print(f'Options, logs and checkpoints: {workdir}/experiments, results: {workdir}/results')
    return 0
