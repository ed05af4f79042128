"""``basicsr demo`` end to end with a couple of iterations: data prep, train, test, PSNR table."""
import os
import re
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'dvmsr_mma', 'demo', '--workdir', str(tmp_path), '--iters', '2'],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r'^(chelsea|coffee)\s+(\d+\.\d+)\s+(\d+\.\d+)$', result.stdout, flags=re.M)
    assert [r[0] for r in rows] == ['chelsea', 'coffee']
    assert all(20 < float(bicubic) < 45 for _, _, bicubic in rows)
    assert os.path.isfile(tmp_path / 'datasets' / 'train_HR_sub.lmdb' / 'meta_info.txt')
    assert os.path.isfile(tmp_path / 'experiments' / 'demo_dvmsr_x2' / 'models' / 'net_g_latest.pth')
