"""mmvae-nb: every sub-command on tiny configs, errors, resume, the report's honesty about scale, torchrun."""
import json, os, socket, subprocess, sys
from pathlib import Path
import pytest
import torch
from mmvae_nb.cli import main, make_parser
from mmvae_nb.experiments import EXPERIMENTS, ExperimentConfig, changes

TINY = ['--set', 'n_train=120', '--set', 'n_test=40', '--set', 'batch_size=40', '--set', 'verbose=false', '--no-progress',
        '--set', 'eval_kwargs={"classifier_epochs": 1, "joint_n": 100, "latent": ["mmvae"], "latent_epochs": 1}']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    "Generated data and trained classifiers go to a cache of this test session, not the user's."
    monkeypatch.setenv('MMVAE_NB_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))
    ENV['MMVAE_NB_CACHE'] = str(tmp_path_factory.getbasetemp() / 'cache')


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_flag_is_documented():
    p = make_parser()
    for action in p._subparsers._group_actions[0].choices.values():
        for a in action._actions:
            if a.dest != 'help': assert a.help, f"{action.prog}: {a.dest} has no help"
    r = subprocess.run([sys.executable, '-m', 'mmvae_nb.cli', 'reproduce', '--help'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and all(f in r.stdout for f in ('--device', '--scale', '--data-root', '--out', '--seed', '--resume'))


def test_list_and_show(capsys):
    code, out, _ = cli(capsys, 'list')
    assert code == 0 and all(n in out for n in EXPERIMENTS)
    code, out, _ = cli(capsys, 'show', 'mvae_mnist', '--scale', 'paper', '--set', 'epochs=7')
    cfg = json.loads(out)
    assert code == 0 and (cfg['epochs'], cfg['latent_dim'], cfg['batch_size'], cfg['warmup_epochs']) == (7, 64, 100, 200)


def test_train_resume_eval(capsys, tmp_path):
    code, out, _ = cli(capsys, 'train', 'demo', '--set', 'epochs=1', '--out', tmp_path, *TINY)
    assert code == 0 and 'trained 1 epochs (3 steps)' in out
    cfg = ExperimentConfig.load(tmp_path / 'config.json')
    assert (cfg.name, cfg.scale, cfg.n_train, cfg.progress) == ('demo', 'cpu', 120, False)
    assert changes(cfg) == {'n_train': 120, 'n_test': 40, 'batch_size': 40, 'epochs': 1, 'eval_kwargs': cfg.eval_kwargs}
    code, out, _ = cli(capsys, 'train', 'demo', '--set', 'epochs=2', '--out', tmp_path, '--resume', *TINY)
    assert code == 0 and 'trained 2 epochs (6 steps)' in out
    assert len((tmp_path / 'metrics.csv').read_text().strip().splitlines()) == 3          # header + 2 epochs
    code, out, _ = cli(capsys, 'eval', tmp_path)
    assert code == 0
    report = (tmp_path / 'report.md').read_text()
    assert '**Scale: cpu**' in report and 'not** paper-scale' in report and '`n_train=120`' in report
    rows = json.loads((tmp_path / 'results.json').read_text())
    assert {'test_loss', 'cross_coherence', 'joint_coherence', 'latent_accuracy'} <= {r['metric'] for r in rows}


def test_demo_writes_a_full_report(capsys, tmp_path):
    "`demo` is `reproduce demo --scale cpu` (here with tiny changes, which the report lists)."
    code, _, _ = cli(capsys, 'demo', '--set', 'epochs=1', '--set', 'log_every=1', '--seed', '5', '--out', tmp_path, *TINY)
    assert code == 0 and json.loads((tmp_path / 'config.json').read_text())['seed'] == 5
    files = {p.name for p in tmp_path.iterdir()}
    assert {'config.json', 'metrics.csv', 'steps.csv', 'report.md', 'results.csv', 'results.json', 'loss_curves.png',
            'reconstructions.png', 'cross_generation.png', 'samples.png', 'checkpoints'} <= files
    report = (tmp_path / 'report.md').read_text()
    assert report.startswith('# JMVAE-kl on the embedded synthetic') and 'reproduce demo --scale cpu --seed 5' in report
    assert '**Scale: cpu**' in report and '`epochs=1`' in report and '| cross_coherence | pen | street |' in report


def test_custom_config_file(capsys, tmp_path):
    cfg = EXPERIMENTS['demo'].config('cpu').replace(name='mine', scale='custom', reduction='', model='mvae', K=None,
                                                     model_kwargs={}, n_train=60, n_test=20, batch_size=20, epochs=1,
                                                     progress=False, verbose=False,
                                                     eval_kwargs={'classifier_epochs': 1, 'joint_n': 50, 'latent': ['mmvae'], 'latent_epochs': 1})
    cfg.save(tmp_path / 'mine.json')
    code, _, err = cli(capsys, 'reproduce', '--config', tmp_path / 'mine.json', '--out', tmp_path / 'run')
    assert code == 0, err
    report = (tmp_path / 'run' / 'report.md').read_text()
    assert '**Scale: custom**' in report and 'mmvae-nb train --config' in report


def test_errors_are_one_line_and_nonzero(capsys, tmp_path):
    assert cli(capsys, 'reproduce', 'nope')[0] == 2
    code, _, err = cli(capsys, 'train', 'demo', '--set', 'epoch=1', '--out', tmp_path)
    assert code == 2 and "unknown ExperimentConfig key 'epoch'" in err
    code, _, err = cli(capsys, 'train', '--out', tmp_path)
    assert code == 2 and 'name an experiment' in err
    code, _, err = cli(capsys, 'eval', tmp_path / 'empty')
    assert code == 2 and 'config.json is missing' in err
    with pytest.raises(SystemExit): main(['reproduce', 'demo', '--scale', 'huge'])


MISSING = """
from mmvae_nb.data import MissingDataError
def loader(split, root=None):
    raise MissingDataError(f"1 raw file of 'SVHN' missing from {root}/SVHN: put train_32x32.mat there")
"""


def test_missing_data_is_a_clear_error(capsys, tmp_path, monkeypatch):
    (tmp_path / 'missing_loader.py').write_text(MISSING); monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = cli(capsys, 'train', 'demo', '--set', 'dataset=missing_loader:loader', '--data-root', tmp_path / 'data',
                       '--out', tmp_path / 'run')
    assert code == 2 and "missing from" in err and str(tmp_path / 'data') in err


def test_cli_under_torchrun_trains_with_two_processes(tmp_path):
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(port), '-m', 'mmvae_nb.cli', 'train', 'demo', '--set', 'epochs=1',
                        '--set', 'ckpt_every=0', '--out', str(tmp_path), *TINY],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    st = torch.load(tmp_path / 'checkpoints' / 'ckpt-000000003.pt', weights_only=True)
    assert st['world_size'] == 2 and len(st['rng']) == 2 and st['data']['world_size'] == 2
    assert r.stdout.count('trained 1 epochs (3 steps)') == 1                 # rank 0 alone reports
