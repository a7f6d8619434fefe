"""Trainer: exact resume after SIGKILL, atomic checkpoints under SIGKILL, NaN reporting, DDP == one process."""
import os, random, signal, socket, subprocess, sys, textwrap, time, warnings
from pathlib import Path
import pytest
import torch
from mmvae_nb.train import (Trainer, TrainConfig, CheckpointManager, NonFiniteLossError, kl_warmup, rng_state,
                            set_rng_state, parse_overrides)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import toy_train  # noqa: E402
from toy_train import toy_model, toy_batches  # noqa: E402

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo',
       'PYTHONPATH': os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')])}
WORKER = [sys.executable, str(HERE / 'toy_train.py')]


def run(args, **kw):
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def final(out): return torch.load(Path(out) / 'final.pt', weights_only=True)


def in_process(args):
    "Run the worker here (saves a subprocess start), on one thread like the subprocesses."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: toy_train.main(args)
    finally: torch.set_num_threads(n)


def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_kl_warmup_is_per_minibatch():
    vals = [kl_warmup(s, 10) for s in range(12)]
    assert vals[0] == pytest.approx(0.1) and vals[4] == pytest.approx(0.5) and vals[9] == 1.0 and vals[11] == 1.0
    assert len(set(vals[:10])) == 10                     # changes every step, not every epoch


def test_rng_roundtrip():
    s = rng_state(); a = (random.random(), torch.rand(3))
    torch.manual_seed(5); random.seed(5)
    set_rng_state(s); assert random.random() == a[0] and torch.equal(torch.rand(3), a[1])


def test_overrides_and_config_errors():
    assert parse_overrides(['epochs=3', 'amsgrad=true']) == {'epochs': 3, 'amsgrad': True}
    with pytest.raises(ValueError, match='unknown TrainConfig key'): parse_overrides(['epoch=3'])
    with pytest.raises(ValueError, match='ckpt_keep must be >= 1'): TrainConfig(ckpt_keep=0)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    common = ['--epochs', '3', '--ckpt-every', '5', '--no-epoch-ckpt']     # 12 steps/epoch: every ckpt is mid-epoch
    ref, killed = tmp_path / 'ref', tmp_path / 'killed'
    in_process(['--out', str(ref)] + common)
    p = subprocess.Popen(WORKER + ['--out', str(killed), '--sleep', '0.04'] + common, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckdir, t0 = killed / 'checkpoints', time.time()
    while not (ckdir.exists() and any(ckdir.glob('ckpt-000000015.pt'))):   # second epoch, 3 batches in
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() - t0 < 60, 'no checkpoint appeared'
        time.sleep(0.005)
    time.sleep(0.1)                                    # let it train past the checkpoint
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL and not (killed / 'final.pt').exists()
    last = CheckpointManager(ckdir, writer=False).load_latest()[1]
    assert 0 < last['epoch_step'] < 12 and last['step'] < 36
    in_process(['--out', str(killed), '--resume'] + common)          # a fresh Trainer, model and iterator
    a, b = final(ref), final(killed)
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    # the history (per-epoch means) is the uninterrupted one too
    ha = torch.load(CheckpointManager(ref / 'checkpoints', writer=False).latest(), weights_only=True)['history']
    hb = torch.load(CheckpointManager(ckdir, writer=False).latest(), weights_only=True)['history']
    strip = lambda h: [{k: v for k, v in r.items() if k != 'seconds'} for r in h]
    assert strip(ha) == strip(hb) and len(ha) == 3


SAVER = textwrap.dedent('''
    import sys, torch
    from mmvae_nb.train import CheckpointManager
    cm = CheckpointManager(sys.argv[1], keep=2)
    step = 0
    while True:
        step += 1
        cm.save({'step': step, 'x': torch.full((2_000_000,), float(step))}, step)   # 8 MB each
''')


def test_sigkill_during_save_never_leaves_a_partial_checkpoint(tmp_path):
    d = tmp_path / 'ck'; script = tmp_path / 'saver.py'; script.write_text(SAVER)
    rng, orphans, kills = random.Random(0), 0, 0
    while kills < 6 and not (kills >= 2 and orphans):
        p = subprocess.Popen([sys.executable, str(script), str(d)], env=ENV, stderr=subprocess.PIPE)
        t0 = time.time()
        while not list(d.glob('.ckpt-*.tmp')) or time.time() - t0 < 0.05:   # a save in flight
            assert p.poll() is None, p.stderr.read().decode()
            assert time.time() - t0 < 60
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.05))
        p.send_signal(signal.SIGKILL); p.wait(); kills += 1
        orphans += bool(list(d.glob('.ckpt-*.tmp')))
        for f in d.glob('ckpt-*.pt'):                   # every complete-named file loads, with its full content
            s = torch.load(f, weights_only=True)
            assert s['x'].numel() == 2_000_000 and bool((s['x'] == s['step']).all()) and f.name == f'ckpt-{s["step"]:09d}.pt'
    assert orphans, 'no kill landed during a save; the test proved nothing'
    CheckpointManager(d, keep=2)                        # reopening removes the orphaned temporary files
    assert all(f.name.startswith('ckpt-') for f in d.iterdir())


def test_nan_loss_names_step_terms_and_checkpoint(tmp_path):
    def poison(tr):
        if tr.epoch == 1: tr.model.beta = float('inf')
        return {}
    cfg = TrainConfig(epochs=3, lr=1e-2, ckpt_every=3, progress=False, verbose=False)
    tr = Trainer(toy_model(), toy_batches(batch_size=16), cfg, out_dir=tmp_path, eval_hooks=[poison])
    with pytest.raises(NonFiniteLossError) as e: tr.fit()
    msg = str(e.value)
    assert 'at step 7 (epoch 2, batch 1 of 6)' in msg and 'kl=' in msg and 'elbo=-inf' in msg
    # step 7 was taken from the step-6 checkpoint: not good; the step-3 one was confirmed by step 4
    assert f"last good checkpoint: {tmp_path / 'checkpoints' / 'ckpt-000000003.pt'}" in msg
    assert 'ckpt-000000006.pt, from which it failed, renamed to ckpt-000000006.pt.bad' in msg
    assert "inputs are finite" in msg and 'lower learning rate' in msg
    # resuming from it (with a finite beta) finishes the run
    tr2 = Trainer(toy_model(seed=3), toy_batches(batch_size=16), cfg, out_dir=tmp_path)
    assert len(tr2.fit(resume=True)) == 3 and tr2.step == 18 and tr2.resumed_from.name == 'ckpt-000000003.pt'


def test_nonfinite_gradient_is_reported(tmp_path):
    m = toy_model()
    m.mods['a'].decoder.f.weight.register_hook(lambda g: g * float('nan'))
    tr = Trainer(m, toy_batches(batch_size=16), TrainConfig(epochs=1, grad_clip=1.0, progress=False, verbose=False))
    with pytest.raises(NonFiniteLossError, match='non-finite gradient norm'): tr.fit()


def test_fresh_run_replaces_old_checkpoints_and_finished_resume_is_a_noop(tmp_path):
    cfg = TrainConfig(epochs=2, progress=False, verbose=False, ckpt_keep=5)
    Trainer(toy_model(), toy_batches(batch_size=32), cfg, out_dir=tmp_path).fit()
    names = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
    assert names == ['ckpt-000000003.pt', 'ckpt-000000006.pt']
    tr = Trainer(toy_model(), toy_batches(batch_size=32), cfg, out_dir=tmp_path)
    h = tr.fit(resume=True)
    assert tr.step == 6 and len(h) == 2
    tr = Trainer(toy_model(), toy_batches(batch_size=32), cfg.replace(epochs=1), out_dir=tmp_path)
    tr.fit()                                            # not resuming: starts over in the same folder
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['ckpt-000000003.pt']


def test_resume_from_a_checkpoint_after_the_last_batch_of_an_epoch(tmp_path):
    "The iterator already points at the next epoch; the trainer must only do the epoch's bookkeeping."
    cfg = TrainConfig(epochs=2, lr=1e-2, ckpt_every=6, ckpt_each_epoch=False, progress=False, verbose=False)
    ref = Trainer(toy_model(), toy_batches(batch_size=16), cfg, out_dir=tmp_path / 'ref'); h_ref = ref.fit()

    class Die(Trainer):
        def train_step(self, batch):
            if self.step == 6: raise KeyboardInterrupt
            return super().train_step(batch)
    with pytest.raises(KeyboardInterrupt): Die(toy_model(), toy_batches(batch_size=16), cfg, out_dir=tmp_path / 'x').fit()
    st = torch.load(tmp_path / 'x' / 'checkpoints' / 'ckpt-000000006.pt', weights_only=True)
    assert st['epoch_step'] == 6 and st['data']['epoch'] == 1 and st['data']['position'] == 0
    tr = Trainer(toy_model(seed=1), toy_batches(batch_size=16), cfg, out_dir=tmp_path / 'x')
    h = tr.fit(resume=True)
    assert tr.step == 12 and [r['epoch'] for r in h] == [1, 2]
    for (k, v), w in zip(ref.model.state_dict().items(), tr.model.state_dict().values()): assert torch.equal(v, w), k


def test_ddp_matches_single_process_and_resumes_on_another_world_size(tmp_path):
    # 48 items, global batch 8: 6 steps per epoch; checkpoints every 3 steps and at epoch ends (kept: 6, 9, 12)
    common = ['--deterministic', '--batch-size', '8', '--items', '48', '--ckpt-every', '3', '--epochs', '2']
    launch = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
              '--master_port', str(free_port()), str(HERE / 'toy_train.py')]
    run(launch + ['--out', str(tmp_path / 'two')] + common)           # 2 ranks x 4 items per step
    in_process(['--out', str(tmp_path / 'one')] + common)              # 1 rank x 8 items per step
    a, b = final(tmp_path / 'one'), final(tmp_path / 'two')
    for k in a: torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    # the 2-process checkpoint of step 9 (mid-epoch 2) continues on 1 process and ends where the others did
    ck = tmp_path / 'two' / 'checkpoints'
    assert sorted(p.name for p in ck.iterdir()) == ['ckpt-000000006.pt', 'ckpt-000000009.pt', 'ckpt-000000012.pt']
    st = torch.load(ck / 'ckpt-000000009.pt', weights_only=True)
    assert st['world_size'] == 2 and st['data']['position'] == 12 and st['epoch_step'] == 3 and len(st['rng']) == 2
    (ck / 'ckpt-000000012.pt').unlink(); (tmp_path / 'two' / 'final.pt').unlink()
    with pytest.warns(UserWarning, match=r'written by 2 process\(es\), resumed on 1'):
        in_process(['--out', str(tmp_path / 'two'), '--resume'] + common)
    c = final(tmp_path / 'two')
    for k in a: torch.testing.assert_close(c[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    h1 = torch.load(tmp_path / 'one' / 'checkpoints' / 'ckpt-000000012.pt', weights_only=True)['history']
    h2 = torch.load(ck / 'ckpt-000000012.pt', weights_only=True)['history']
    assert h1[1]['train_loss'] == pytest.approx(h2[1]['train_loss'], rel=1e-5)   # per-epoch means over all ranks
