"""State on SIGTERM/SIGINT: the interrupted iteration finishes, its state and checkpoint are written, the run
exits 128 + signal, and ``--auto_resume`` ends bit-identical to a run never interrupted; a second signal exits
at once; in a 2-process gloo run (torchrun, Slurm) all ranks stop after the same iteration, rank 0 writes."""
import os
import signal
import socket
import subprocess
import sys

import pytest
from train_runs import DRIVER, assert_same_weights, finish, load_net, run_dir, run_train, start_train, write_options

TOTAL_ITER = 8  # 3 iterations per epoch, saves at 4 and 8: the signal at 5 falls mid-epoch, between saves


@pytest.mark.parametrize('distill, amp, sig', [(False, None, 'TERM'), (True, 'fp16', 'INT')],
                         ids=['SRModel-SIGTERM', 'DistillationModel-fp16-SIGINT'])
def test_signal_saves_state_and_resume_is_bit_identical(tmp_path, write_pairs, distill, amp, sig):
    reference = tmp_path / 'reference'
    reference.mkdir()
    uninterrupted = start_train(reference, write_options(reference, write_pairs, TOTAL_ITER, distill, amp=amp))
    yml = write_options(tmp_path, write_pairs, TOTAL_ITER, distill, amp=amp)
    result = run_train(tmp_path, yml, env={'DVMSR_TEST_SIGNAL': f'5:{sig}'})
    done = finish(uninterrupted)
    assert done.returncode == 0, done.stderr[-3000:]
    signum = getattr(signal, f'SIG{sig}')
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    run = run_dir(tmp_path)
    assert sorted(os.listdir(run / 'training_states')) == ['4.state', '5.state']
    assert sorted(os.listdir(run / 'models')) == ['net_g_4.pth', 'net_g_5.pth']
    logged = [line for line in result.stderr.splitlines() if 'stopped after iter 5' in line]
    assert len(logged) == 1 and f'SIG{sig}' in logged[0] and str(run / 'training_states' / '5.state') in logged[0]
    assert str(run / 'models' / 'net_g_5.pth') in logged[0]

    result = run_train(tmp_path, yml, '--auto_resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Resuming training from epoch: 1, iter: 5.' in result.stderr
    assert_same_weights(load_net(run / 'models' / 'net_g_latest.pth'),
                        load_net(run_dir(reference) / 'models' / 'net_g_latest.pth'))


def test_second_signal_exits_at_once(tmp_path, write_pairs):
    yml = write_options(tmp_path, write_pairs, TOTAL_ITER)
    result = run_train(tmp_path, yml, env={'DVMSR_TEST_SIGNAL': '5:TERM:2'})
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert sorted(os.listdir(run_dir(tmp_path) / 'training_states')) == ['4.state']  # nothing for iteration 5


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_ranks(tmp_path, launcher, *flags, signalled=None):
    """Two gloo ranks of ``basicsr train`` through the test driver; rank ``signalled`` gets SIGTERM at iter 2.
    Returns the exit codes (torchrun: its own) and the output."""
    (tmp_path / 'driver.py').write_text(DRIVER)
    argv = ['driver.py', 'train', '-opt', 'train.yml', '--launcher', launcher, *flags]
    env = {k: v for k, v in os.environ.items() if k not in ('MASTER_ADDR', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env['OMP_NUM_THREADS'] = '1'
    if signalled is not None:
        env['DVMSR_TEST_SIGNAL'] = f'2:TERM:1:{signalled}'
    if launcher == 'pytorch':
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
               f'--master_port={_free_port()}', *argv]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        return [result.returncode], result.stdout + result.stderr
    env.update(SLURM_NTASKS='2', SLURM_NODELIST='localhost', MASTER_PORT=str(_free_port()))
    procs = [subprocess.Popen([sys.executable, *argv], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=dict(env, SLURM_PROCID=str(rank), RANK=str(rank)))
             for rank in range(2)]
    try:
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    return [proc.returncode for proc in procs], '\n'.join(outputs)


@pytest.mark.slow
def test_two_ranks_stop_together_and_resume(tmp_path, write_pairs):
    """Stopped under the Slurm launcher with SIGTERM sent to rank 1 only, resumed under torchrun."""
    write_options(tmp_path, write_pairs, total_iter=4, save_freq=100)
    codes, output = _two_ranks(tmp_path, 'slurm', signalled=1)
    assert codes == [128 + signal.SIGTERM] * 2, output[-5000:]  # both ranks stopped, with the signal's code
    assert output.count('SIGTERM: stopped after iter 2') == 1, output[-5000:]  # logged once, by rank 0
    run = run_dir(tmp_path)
    assert os.listdir(run / 'training_states') == ['2.state']
    assert sorted(os.listdir(run / 'models')) == ['net_g_2.pth']

    codes, output = _two_ranks(tmp_path, 'pytorch', '--auto_resume')
    assert codes == [0], output[-5000:]
    assert 'Resuming training from epoch: 1, iter: 2.' in output, output[-5000:]
    assert (run / 'models' / 'net_g_latest.pth').is_file()


def _open_group():
    import datetime

    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{_free_port()}', rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))


@pytest.mark.parametrize('ends', ['finished', 'interrupted', 'failed'])
def test_the_process_group_a_run_opened_is_closed_and_one_the_caller_opened_is_kept(ends):
    """Left to interpreter exit, gloo's teardown could abort a finished rank (exit -6); a group the caller opened
    before the run is the caller's."""
    import torch.distributed as dist

    from dvmsr_mma.training.stop_signals import _with_handlers
    from dvmsr_mma.utils.errors import TrainingInterrupted

    def pipeline(root_path):
        if not dist.is_initialized():
            _open_group()  # as --launcher makes BasicSR's parse_options do
        if ends == 'interrupted':
            raise TrainingInterrupted('stopped', signal.SIGTERM)
        if ends == 'failed':
            raise ValueError('a bug')

    def run():
        try:
            _with_handlers(pipeline)('.')
        except (TrainingInterrupted, ValueError):
            assert ends != 'finished'

    run()
    assert not dist.is_initialized()
    _open_group()
    try:
        run()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_a_finished_run_leaves_no_model_alive(tmp_path, write_pairs, monkeypatch, fresh_logger):
    """Nothing of the package keeps the run's model (and so its DDP wrappers and their gloo work) once the run is
    over: destroyed at interpreter exit instead, such objects could abort a rank (exit -6)."""
    import gc
    import weakref

    from basicsr.models.sr_model import SRModel

    from dvmsr_mma.cli import main

    built = []
    init = SRModel.__init__

    def recording_init(self, opt):
        init(self, opt)
        built.append(weakref.ref(self))

    monkeypatch.setattr(SRModel, '__init__', recording_init)
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', str(write_options(tmp_path, write_pairs, total_iter=2, save_freq=100))]) == 0
    gc.collect()
    assert len(built) == 1 and built[0]() is None
