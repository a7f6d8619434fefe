"""Issue 10: the README's "Bring your own data" example runs as written, through the API and through the CLI
(`mmvae-nb train custom --dataset mymod:loader --model mvae`, the module found from the working directory)."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest, torch

README = Path(__file__).resolve().parents[1] / 'README.md'
FASHION = Path('/usr/share/datasets/fashion-mnist')
pytestmark = pytest.mark.skipif(not (FASHION / 'train-images-idx3-ubyte.gz').is_file(),
                                reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (Debian) puts it in "
                                       "/usr/share/datasets/fashion-mnist")


def example_module(folder: Path) -> Path:
    "Write the README's example (between its markers) to `folder/mymod.py`."
    text = README.read_text()
    block = re.search(r'<!-- own-data-example -->\s*```python\n(.*?)```\s*<!-- /own-data-example -->', text, re.S)
    assert block, "README lost its own-data example markers"
    code = block.group(1)
    assert len([l for l in code.splitlines() if l.strip() and not l.startswith('#')]) <= 15   # the promised size
    (folder / 'mymod.py').write_text(code)
    return folder / 'mymod.py'


def test_readme_example_through_the_api(tmp_path, monkeypatch):
    example_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib; mymod = importlib.import_module('mymod')
    from mmvae_nb.mvae import MVAE
    from mmvae_nb.models import quick_fit
    train = mymod.fashion_names('train')
    assert len(train) == 60000 and train.specs[1].decode(train.data['text'][:3]) == ['t shirt top', 'trouser', 'pullover']
    model = MVAE.from_specs(train.specs, latent_dim=8)
    losses = quick_fit(model, train.subset(torch.arange(1024)), steps=30, batch_size=128)
    assert losses[-1] < losses[0]
    test = mymod.fashion_names('test').subset(torch.arange(16))
    words = train.specs[1].decode(model.generate(test.batch(torch.arange(16)), ['image'], ['text'])['text'])
    assert all(w and set(w.split()) <= set(train.specs[1].vocab) for w in words)


def test_readme_example_through_the_cli(tmp_path):
    example_module(tmp_path)
    env = {**os.environ, 'PYTHONPATH': ''}                     # found from the working directory, no PYTHONPATH=.
    cli = [str(Path(sys.executable).with_name('mmvae-nb'))]
    quick = ['--set', 'n_train=1000', '--set', 'n_test=200', '--set', 'epochs=1', '--no-progress', '--threads', '1']
    run = subprocess.run(cli + ['train', 'custom', '--dataset', 'mymod:fashion_names', '--model', 'mvae', '--out', 'runs/f',
                                *quick, '--set', 'eval_kwargs={"joint_n": 200, "latent": ["mmvae"], "latent_epochs": 1, '
                                                '"classifier_epochs": 1}'],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    ev = subprocess.run(cli + ['eval', 'runs/f', '--threads', '1'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-2000:]
    report = (tmp_path / 'runs/f/report.md').read_text()
    assert report.startswith('# mvae on mymod:fashion_names') and '**Scale: custom**' in report
    rows = json.loads((tmp_path / 'runs/f/results.json').read_text())
    assert {('cross_coherence', 'image', 'text'), ('cross_coherence', 'text', 'image')} <= {(r['metric'], r['given'], r['target']) for r in rows}
    assert (tmp_path / 'runs/f/cross_generation.png').stat().st_size > 0
    # a wrong value is a usage error (exit 2) before any data is loaded or anything written
    bad = subprocess.run(cli + ['train', 'custom', '--dataset', 'mymod:fashion_names', '--set', 'lr=abc', '--out', 'runs/g'],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and 'lr' in bad.stderr and not (tmp_path / 'runs/g').exists()
