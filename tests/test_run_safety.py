"""Runs you can trust: resume continues the same run, one run per folder, an honest NaN/divergence guard,
a DDP timeout, and CLI value errors that fail before anything is loaded or written (issue 10)."""
import hashlib, json, math, os, shutil, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
import torch
from torch import nn
from mmvae_nb.core import ModalitySpec
from mmvae_nb.multimodal import MultimodalDataset, BatchIterator
from mmvae_nb.train import (Trainer, TrainConfig, CheckpointManager, CheckpointError, NonFiniteLossError, RunLock,
                            RunLockedError, mean_loss)
from mmvae_nb.cli import main
from mmvae_nb import experiments
from mmvae_nb.experiments import EXPERIMENTS, ExperimentConfig

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from toy_train import toy_model, toy_batches  # noqa: E402

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo',
       'PYTHONPATH': os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')])}
QUIET = dict(progress=False, verbose=False)
TINY = ['--set', 'n_train=120', '--set', 'n_test=40', '--set', 'batch_size=40', '--set', 'verbose=false', '--no-progress',
        '--set', 'eval_kwargs={"classifier_epochs": 1, "joint_n": 100, "latent": ["mmvae"], "latent_epochs": 1}']


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('MMVAE_NB_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def digest(folder) -> dict:
    "Every file under `folder`, by relative path, with the SHA-256 of its bytes."
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


def cli(capsys, *argv):
    code = main([str(a) for a in argv]); out = capsys.readouterr()
    return code, out.out, out.err


def lock_holder(folder):
    "A process holding the lock of `folder` (what a training into it does first); returns once it holds it."
    p = subprocess.Popen([sys.executable, '-c', 'import sys, time; from mmvae_nb.train import RunLock; '
                          f'RunLock({str(folder)!r}).acquire(); print("locked", flush=True); time.sleep(120)'],
                         env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == 'locked'
    return p


# --- 1. resume = continue the same run ----------------------------------------------------------

def test_resume_applies_a_new_learning_rate_for_real(tmp_path):
    cfg = TrainConfig(epochs=1, lr=1e-2, **QUIET)
    Trainer(toy_model(), toy_batches(batch_size=16), cfg, out_dir=tmp_path).fit()
    before = torch.load(tmp_path / 'checkpoints' / 'ckpt-000000006.pt', weights_only=True)['model']
    tr = Trainer(toy_model(seed=1), toy_batches(batch_size=16), cfg.replace(epochs=2, lr=1e-4), out_dir=tmp_path)
    h = tr.fit(resume=True)
    assert tr.optimizer.param_groups[0]['lr'] == pytest.approx(1e-4)         # today: the checkpoint's 1e-2 wins
    assert [r['lr'] for r in h] == pytest.approx([1e-2, 1e-4]) and 'lr 0.01 -> 0.0001' in h[1]['resumed_with']
    st = torch.load(tmp_path / 'checkpoints' / 'ckpt-000000012.pt', weights_only=True)
    assert st['optimizer']['param_groups'][0]['lr'] == pytest.approx(1e-4) and st['config']['lr'] == 1e-4
    assert st['changes'] == [{'step': 6, 'epoch': 1, 'changes': {'epochs': [1, 2], 'lr': [1e-2, 1e-4]}}]
    # six Adam steps move a weight by at most about 6 x lr: 6e-4 at the new rate, ~6e-2 at the old one
    moved = max((st['model'][k] - v).abs().max().item() for k, v in before.items())
    assert moved < 6 * 1e-4 * 1.5, moved


def test_resume_refuses_another_run_and_leaves_the_folder_as_it_was(tmp_path):
    cfg = TrainConfig(epochs=2, lr=1e-2, ckpt_every=4, **QUIET)
    Trainer(toy_model(), toy_batches(batch_size=16), cfg.replace(epochs=1), out_dir=tmp_path).fit()
    snap = digest(tmp_path)
    with pytest.raises(CheckpointError, match=r"another seed \(0 -> 3\)"):
        Trainer(toy_model(), toy_batches(batch_size=16), cfg.replace(seed=3), out_dir=tmp_path).fit(resume=True)
    with pytest.raises(CheckpointError, match='does not fit this run'):                  # another latent size
        Trainer(toy_model(D=3), toy_batches(batch_size=16), cfg, out_dir=tmp_path).fit(resume=True)
    with pytest.raises(CheckpointError, match='checkpoint has n=96 but this iterator has n=48'):
        Trainer(toy_model(), toy_batches(n=48, batch_size=16), cfg, out_dir=tmp_path).fit(resume=True)
    assert digest(tmp_path) == snap


def test_unreadable_checkpoints_are_an_error_not_a_fresh_start(tmp_path):
    cfg = TrainConfig(epochs=1, lr=1e-2, ckpt_every=2, **QUIET)
    Trainer(toy_model(), toy_batches(batch_size=16), cfg, out_dir=tmp_path).fit()
    for p in CheckpointManager(tmp_path / 'checkpoints').paths(): p.write_bytes(p.read_bytes()[:100])   # all truncated
    snap = digest(tmp_path)
    with pytest.raises(CheckpointError, match='no checkpoint in .* can be read'):
        Trainer(toy_model(), toy_batches(batch_size=16), cfg.replace(epochs=2), out_dir=tmp_path).fit(resume=True)
    assert digest(tmp_path) == snap                                              # today: deleted, trained afresh


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    "One tiny demo training (1 epoch, 3 steps) that the CLI tests copy."
    out = tmp_path_factory.mktemp('demo') / 'run'
    mp = pytest.MonkeyPatch(); mp.setenv('MMVAE_NB_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))
    try: assert main(['train', 'demo', '--set', 'epochs=1', '--out', str(out), *TINY]) == 0
    finally: mp.undo()
    return out


def copy_of(run, tmp_path) -> Path:
    shutil.copytree(run, tmp_path / 'run'); return tmp_path / 'run'


def test_cli_resume_reads_the_folders_config_and_applies_lr(capsys, tmp_path, demo_run):
    run = copy_of(demo_run, tmp_path)
    # no TINY again: the folder's own config.json (n_train=120, batch 40) is the run's
    code, out, err = cli(capsys, 'train', '--resume', '--out', run, '--set', 'epochs=2', '--set', 'lr=1e-4')
    assert code == 0 and 'trained 2 epochs (6 steps)' in out, err
    assert ExperimentConfig.load(run / 'config.json').lr == 1e-4
    st = torch.load(run / 'checkpoints' / 'ckpt-000000006.pt', weights_only=True)
    assert st['optimizer']['param_groups'][0]['lr'] == pytest.approx(1e-4)
    lrs = [line.split(',')[2] for line in (run / 'metrics.csv').read_text().splitlines()[1:]]
    assert [float(x) for x in lrs] == pytest.approx([experiments.EXPERIMENTS['demo'].config('cpu').lr, 1e-4])


def test_cli_incompatible_resume_changes_nothing(capsys, tmp_path, demo_run):
    run = copy_of(demo_run, tmp_path); snap = digest(run)
    code, _, err = cli(capsys, 'train', 'demo', '--resume', '--out', run, '--set', 'latent_dim=8')
    assert code == 2 and 'another latent_dim (20 -> 8)' in err
    code, _, err = cli(capsys, 'train', 'mvae_mnist', '--resume', '--out', run)
    assert code == 2 and "holds a run of experiment 'demo', not 'mvae_mnist'" in err
    assert digest(run) == snap
    # a config.json edited by hand: the checkpoint itself is checked before anything is written
    cfg = json.loads((run / 'config.json').read_text()); cfg['latent_dim'] = 8
    (run / 'config.json').write_text(json.dumps(cfg)); snap = digest(run)
    code, _, err = cli(capsys, 'train', '--resume', '--out', run)
    assert code == 2 and 'another latent_dim (20 -> 8)' in err and 'ckpt-000000003.pt' in err
    assert digest(run) == snap
    for p in (run / 'checkpoints').iterdir(): p.write_bytes(b'not a checkpoint')
    cfg['latent_dim'] = 20; (run / 'config.json').write_text(json.dumps(cfg)); snap = digest(run)
    code, _, err = cli(capsys, 'train', '--resume', '--out', run)
    assert code == 2 and 'can be read' in err and digest(run) == snap


# --- 2. one run per folder ----------------------------------------------------------------------

def test_a_second_training_into_a_busy_folder_fails_at_once(tmp_path):
    worker = subprocess.Popen([sys.executable, str(HERE / 'toy_train.py'), '--out', str(tmp_path), '--sleep', '0.2',
                               '--epochs', '2', '--ckpt-every', '5'], env=ENV, stderr=subprocess.PIPE)
    t0 = time.time()
    while not (tmp_path / '.lock').exists():
        assert worker.poll() is None, worker.stderr.read().decode()
        assert time.time() - t0 < 60; time.sleep(0.01)
    with pytest.raises(RunLockedError, match=f'in use by another training \\(pid {worker.pid} on'):
        Trainer(toy_model(), toy_batches(), TrainConfig(epochs=1, **QUIET), out_dir=tmp_path).fit()
    assert worker.wait(timeout=120) == 0, worker.stderr.read().decode()
    # the first run's files are its own and complete: today the second run deletes its checkpoints
    assert CheckpointManager(tmp_path / 'checkpoints').latest().name == 'ckpt-000000024.pt'
    assert not (tmp_path / '.lock').exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    p = subprocess.run([sys.executable, '-c', 'import os, signal; from mmvae_nb.train import RunLock; '
                        f'RunLock({str(tmp_path)!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)'], env=ENV)
    assert p.returncode == -signal.SIGKILL and (tmp_path / '.lock').exists()
    with RunLock(tmp_path) as lock: assert 'no longer running' in lock.stale, lock.stale
    h = Trainer(toy_model(), toy_batches(batch_size=32), TrainConfig(epochs=1, **QUIET), out_dir=tmp_path).fit()
    assert len(h) == 1 and not (tmp_path / '.lock').exists()


def test_cli_training_into_a_locked_folder_is_refused_before_writing(capsys, tmp_path):
    holder = lock_holder(tmp_path / 'run')
    try:
        code, _, err = cli(capsys, 'train', 'demo', '--set', 'epochs=1', '--out', tmp_path / 'run', *TINY)
        assert code == 2 and f'in use by another training (pid {holder.pid}' in err
        assert not (tmp_path / 'run' / 'config.json').exists()
    finally: holder.kill(); holder.wait()


# --- 3. an honest NaN / divergence guard --------------------------------------------------------

def test_last_good_checkpoint_gives_finite_losses_after_a_nonfinite_gradient(tmp_path):
    "Finite loss, NaN gradients, no clipping: Adam would write NaN weights into the next checkpoint."
    cfg = TrainConfig(epochs=3, lr=1e-2, ckpt_every=2, **QUIET)
    tr = Trainer(toy_model(), toy_batches(batch_size=16), cfg, out_dir=tmp_path)
    tr.model.mods['a'].decoder.f.weight.register_hook(lambda g: g * float('nan') if tr.step == 5 else g)
    with pytest.raises(NonFiniteLossError) as e: tr.fit()
    msg = str(e.value)
    named = msg.split('last good checkpoint: ')[1].split(' (')[0]
    assert named == str(tmp_path / 'checkpoints' / 'ckpt-000000004.pt') and 'at step 6' in msg
    model = toy_model(seed=4); model.load_state_dict(torch.load(named, weights_only=True)['model'])
    losses = mean_loss(model, toy_batches(batch_size=16))
    assert all(math.isfinite(v) for v in losses.values()), losses
    tr2 = Trainer(toy_model(seed=4), toy_batches(batch_size=16), cfg, out_dir=tmp_path)
    h = tr2.fit(resume=True)
    assert tr2.resumed_from == Path(named) and tr2.step == 18 and all(math.isfinite(r['train_loss']) for r in h)


def test_an_update_that_breaks_the_weights_is_never_checkpointed(tmp_path):
    cfg = TrainConfig(epochs=2, lr=1e-2, ckpt_every=2, **QUIET)
    tr = Trainer(toy_model(), toy_batches(batch_size=16), cfg, out_dir=tmp_path)
    def overflow(opt, args, kwargs):                      # an update with finite inputs and a non-finite result
        if tr.step == 3:
            with torch.no_grad(): tr.model.mods['b'].decoder.f.bias[0] = float('inf')
    tr.optimizer.register_step_post_hook(overflow)
    with pytest.raises(NonFiniteLossError, match=r'non-finite state \(mods.b.decoder.f.bias'):
        tr.fit()
    names = [p.name for p in CheckpointManager(tmp_path / 'checkpoints').paths()]
    assert names == ['ckpt-000000002.pt']                 # the step-4 state was not written
    st = torch.load(tmp_path / 'checkpoints' / names[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in st['model'].values())


def test_an_exploding_loss_stops_as_divergence(tmp_path):
    def explode(tr):
        if tr.epoch == 1: tr.model.beta = 1e25          # finite, but 24 orders of magnitude off
        return {}
    tr = Trainer(toy_model(), toy_batches(batch_size=16), TrainConfig(epochs=3, lr=1e-2, **QUIET), out_dir=tmp_path,
                 eval_hooks=[explode])
    with pytest.raises(NonFiniteLossError, match=r'^diverging loss \(.*e\+2\d.*at step 7'):   # today: exits normally
        tr.fit()


class Squares(nn.Module):
    "loss = mean (x w)^2: NaN inputs give a NaN loss directly (no distribution checks in between)."
    kl_scale, beta = 1.0, 1.0
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.ones(3))
    def loss(self, batch): return (batch.data['x'] * self.w).pow(2).mean(), {}


def test_the_message_says_whether_the_inputs_were_finite(tmp_path):
    x = torch.rand(40, 3); x[17, 1] = float('nan')
    # validate=False: MultimodalDataset would refuse the NaN itself; the trainer's guard is the last line for data
    # that reaches it another way (a custom iterator, a model with validate_values=False)
    ds = MultimodalDataset({'x': x}, (ModalitySpec('x', (3,), 'features'),), torch.zeros(40, dtype=torch.long), name='nan',
                           validate=False)
    it = BatchIterator(ds, 40, shuffle=False, device='cpu')
    with pytest.raises(NonFiniteLossError) as e: Trainer(Squares(), it, TrainConfig(epochs=1, **QUIET)).fit()
    msg = str(e.value)
    assert "inputs are NOT finite (modality 'x': 1 item(s), e.g. dataset rows [17])" in msg
    assert 'fix the data' in msg and 'resume with a lower learning rate' not in msg   # no lr advice: the data is the cause
    x[17, 1] = 1e30                                                         # finite inputs, a loss of 1e60 -> inf
    with pytest.raises(NonFiniteLossError) as e: Trainer(Squares(), it, TrainConfig(epochs=1, **QUIET)).fit()
    assert 'inputs are finite' in str(e.value) and 'lower learning rate' in str(e.value)


# --- 8. DDP: a stalled process ends the run with a message --------------------------------------

STALL = textwrap.dedent('''
    import os, sys, time
    import torch
    from toy_train import toy_model, toy_batches
    from mmvae_nb.train import Trainer, TrainConfig, init_distributed, DistributedTimeoutError
    torch.set_num_threads(1)
    rank, ws, dev = init_distributed('cpu', timeout=3)
    class Stalling(Trainer):
        def train_step(self, batch):
            if self.rank == 1 and self.step == 2: time.sleep(120)     # stuck: its peer must not wait forever
            return super().train_step(batch)
    cfg = TrainConfig(epochs=2, ckpt_every=1, progress=False, verbose=False, ddp_timeout=3)
    tr = Stalling(toy_model(), toy_batches(48, 8, rank=rank, world_size=ws), cfg, out_dir=sys.argv[1])
    try: tr.fit()
    except DistributedTimeoutError as e: print(f'STOPPED {e}', file=sys.stderr, flush=True); os._exit(4)
    os._exit(0)
''')


def test_a_stalled_rank_ends_the_run_instead_of_hanging(tmp_path):
    script = tmp_path / 'stall.py'; script.write_text(STALL)
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / 'run')], stderr=subprocess.PIPE, text=True,
                              env={**ENV, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'WORLD_SIZE': '2',
                                   'RANK': str(r), 'LOCAL_RANK': str(r)}) for r in range(2)]
    try:
        err = procs[0].communicate(timeout=100)[1]          # today: no timeout parameter, and a 30-minute wait
        assert procs[0].returncode == 4, err
        assert 'STOPPED rank 0: the other processes did not answer within ddp_timeout=3 s near step 3' in err, err
        assert 'ckpt-000000002.pt' in err                    # the checkpoint to resume from
    finally:
        for p in procs: p.kill(); p.wait()


# --- 7 (part). CLI value errors are usage errors, before anything is loaded or written ---------

@pytest.mark.parametrize('change, message', [
    ('lr=abc', "config field lr must be float, got 'abc'"),
    ('model_kwargs={"alpa": 3}', "unknown key(s) ['alpa'] in model_kwargs of model 'jmvae'"),
    ('eval_kwargs={"joint": 5}', "unknown key(s) ['joint'] in eval_kwargs"),
    ('latent_dim=2.5', 'config field latent_dim must be int'),
    ('modle=mvae', "unknown ExperimentConfig key 'modle'")])
def test_cli_value_errors_fail_before_data_or_files(capsys, tmp_path, monkeypatch, change, message):
    def no_data(*a, **k): raise AssertionError('data were loaded before the config was checked')
    monkeypatch.setattr(experiments, 'load_data', no_data)
    code, _, err = cli(capsys, 'train', 'demo', '--set', change, '--out', tmp_path / 'run')
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'run').exists()


def test_a_new_model_on_the_demo_takes_neither_its_kwargs_nor_its_title(capsys, tmp_path):
    code, out, _ = cli(capsys, 'show', 'demo', '--set', 'model=mvae')
    cfg = json.loads(out)
    assert code == 0 and (cfg['model'], cfg['model_kwargs'], cfg['K']) == ('mvae', {}, None)
    code, _, err = cli(capsys, 'reproduce', 'demo', '--set', 'model=mvae', '--set', 'epochs=1', '--out', tmp_path, *TINY)
    assert code == 0, err
    report = (tmp_path / 'report.md').read_text()
    title = report.splitlines()[0]
    assert title.startswith('# mvae on synthetic_digits') and EXPERIMENTS['demo'].title not in report, title
    assert "`model='mvae'`" in report and 'MMVAE' not in title


LOADER = '''
from mmvae_nb.data import MissingDataError
def loader(split, root=None):
    raise MissingDataError("cwd_module_loader was imported from the working directory")
'''


def test_module_paths_resolve_from_the_working_directory(capsys, tmp_path, monkeypatch):
    (tmp_path / 'cwd_module_1a2b.py').write_text(LOADER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p not in ('', '.', str(tmp_path))])
    code, _, err = cli(capsys, 'train', 'demo', '--set', 'dataset=cwd_module_1a2b:loader', '--out', tmp_path / 'run')
    assert code == 2 and 'cwd_module_loader was imported from the working directory' in err, err


def test_a_malformed_config_file_is_named(capsys, tmp_path):
    bad = tmp_path / 'mine.json'; bad.write_text('{"name": "mine", "epochs": 2,,}')
    code, _, err = cli(capsys, 'train', '--config', bad, '--out', tmp_path / 'run')
    assert code == 2 and f'config file {bad} is not valid JSON' in err
    (tmp_path / 'run').mkdir(); (tmp_path / 'run' / 'config.json').write_text('[1, 2]')
    code, _, err = cli(capsys, 'eval', tmp_path / 'run')
    assert code == 2 and f"config file {tmp_path / 'run' / 'config.json'} must hold a JSON object" in err
