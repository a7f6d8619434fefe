"""Tests of mmvae_nb.synthetic: the generated paired digits ('pen', 'street')."""
import time
import numpy as np
import pytest
import torch
from mmvae_nb.synthetic import (synthetic_digits, generate_synthetic_digits, glyph_bank, gaussian_blur, random_affine,
                                render_pen, render_street, SPLITS, SYNTHETIC_VERSION, NAME)


@pytest.fixture(scope='module')
def small():
    return synthetic_digits('train', n=2500, seed=0, cache=False), synthetic_digits('test', n=600, seed=0, cache=False)


def test_names_shapes_dtypes(small):
    tr, te = small
    for ds in (tr, te):
        assert ds.name == 'synthetic-digits (generated, not MNIST/SVHN)' == NAME and ds.synthetic is True
        assert ds.modalities == ('pen', 'street')
        assert ds.data['pen'].dtype == torch.uint8 and ds.data['pen'].shape[1:] == (1, 28, 28)
        assert ds.data['street'].dtype == torch.uint8 and ds.data['street'].shape[1:] == (3, 32, 32)
        assert ds.spec('pen').arch == 'mnist_mlp' and ds.spec('street').arch == 'svhn_cnn'
    assert len(tr) == 2500 and len(te) == 600
    assert SPLITS['train'][1] >= 20000 and SPLITS['train'][1] == 24000 and SPLITS['test'][1] == 4000


def test_balance_and_same_class_pairs():
    d = generate_synthetic_digits(505, seed=3)
    assert torch.equal(d['pen_labels'][d['rows_pen']], d['street_labels'][d['rows_street']])
    assert torch.equal(d['rows_pen'].sort().values, torch.arange(505))          # each item used once
    assert torch.equal(d['rows_street'].sort().values, torch.arange(505))
    counts = torch.bincount(d['pen_labels'], minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    assert torch.equal(torch.bincount(d['street_labels'], minlength=10), counts)
    # partners are random: pen item i is not systematically paired with street item i
    assert float((d['rows_pen'] == d['rows_street']).float().mean()) < 0.2


def test_determinism_and_seeds():
    a, b = generate_synthetic_digits(40, 11), generate_synthetic_digits(40, 11)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = generate_synthetic_digits(40, 12)
    assert not torch.equal(a['pen'], c['pen']) and not torch.equal(a['street'], c['street'])
    tr, te = synthetic_digits('train', n=30, seed=1, cache=False), synthetic_digits('test', n=30, seed=1, cache=False)
    assert not torch.equal(tr.data['pen'], te.data['pen'])


def test_cache_roundtrip(tmp_path):
    ds = synthetic_digits('test', n=40, seed=2, cache=tmp_path)
    f = tmp_path / 'synthetic' / f'synthetic-digits-v{SYNTHETIC_VERSION}-test-seed2-n40.pt'
    assert f.is_file() and [p.name for p in f.parent.iterdir()] == [f.name]     # no temporary left behind
    from mmvae_nb.data import content_digest
    d = torch.load(f, weights_only=True)
    d['payload']['pen'][:] = 0
    torch.save({'payload': d['payload'], 'content_digest': content_digest(d['payload'])}, f)
    again = synthetic_digits('test', n=40, seed=2, cache=tmp_path)                # a consistent cached file is read back
    assert int(again.data['pen'].max()) == 0 and torch.equal(again.data['street'], ds.data['street'])
    d['payload']['pen'][:] = 1
    torch.save(d, f)                                                             # edited without its digest: corrupt
    with pytest.warns(UserWarning, match='content digest mismatch'):
        rebuilt = synthetic_digits('test', n=40, seed=2, cache=tmp_path)
    assert torch.equal(rebuilt.data['pen'], ds.data['pen'])
    with pytest.raises(ValueError, match="unknown split 'val'"):
        synthetic_digits('val', cache=False)
    with pytest.raises(ValueError, match='n must be at least 10'):
        synthetic_digits('test', n=3, cache=False)


def test_image_statistics(small):
    tr, _ = small
    b = tr.batch(torch.arange(500))
    pen, street = b.data['pen'], b.data['street']
    assert 0.05 < float(pen.mean()) < 0.3                         # dark background, MNIST-like amount of ink
    assert float(pen.amax((1, 2, 3)).min()) > 0.9                 # every digit has saturated strokes
    border = torch.cat([pen[..., :2, :].flatten(1), pen[..., -2:, :].flatten(1)], 1)
    assert float(border.mean()) < 0.05                            # digits are centred, borders mostly empty
    assert float(street.std((1, 2, 3)).min()) > 0.02              # no blank street image
    assert float(street.mean((0, 2, 3)).std()) < 0.1              # no colour cast overall
    assert float((street.amax(1) - street.amin(1)).mean()) > 0.05  # but the images are coloured


def test_building_blocks():
    bank = glyph_bank()
    assert bank.ndim == 4 and bank.shape[1:] == (10, 64, 64) and bank.shape[0] >= 12
    assert float(bank.amin()) >= 0 and float(bank.amax()) <= 1
    assert not torch.allclose(bank[0, 1], bank[0, 7])
    x = torch.zeros(2, 3, 15, 15); x[..., 7, 7] = 1
    y = gaussian_blur(x, 1.5)
    torch.testing.assert_close(y.sum((-1, -2)), torch.ones(2, 3), atol=1e-5, rtol=0)
    r = torch.arange(15.) - 7
    # the variance is that of the discrete Gaussian truncated at ceil(2.5 sigma) = 4 (a little under sigma^2)
    k = torch.exp(-torch.arange(-4., 5.) ** 2 / (2 * 1.5 ** 2)); k = k / k.sum()
    torch.testing.assert_close((y[0, 0].sum(0) * r ** 2).sum(), (k * torch.arange(-4., 5.) ** 2).sum(), atol=1e-5, rtol=0)
    assert abs(float((k * torch.arange(-4., 5.) ** 2).sum()) - 1.5 ** 2) < 0.1
    th = random_affine(50, torch.Generator().manual_seed(0), 10, 0.2, (0.9, 1.1), (1, 1), 0.1)
    assert th.shape == (50, 2, 3) and float(th[:, :, 2].abs().max()) <= 0.1
    g = torch.Generator().manual_seed(0)
    assert render_pen(torch.arange(10), g).shape == (10, 1, 28, 28)
    assert render_street(torch.arange(10), g).shape == (10, 3, 32, 32)


def street_features(x):
    g = x.mean(1).flatten(1)
    return (g - g.median(1, keepdim=True).values).abs()


def linear_accuracy(ftr, fte, ytr, yte):
    from sklearn.linear_model import LogisticRegression
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-3
    clf = LogisticRegression(max_iter=200, C=0.05).fit(((ftr - mu) / sd).numpy(), ytr.numpy())
    return clf.score(((fte - mu) / sd).numpy(), yte.numpy())


def test_classes_are_linearly_recoverable(small):
    tr, te = small
    btr, bte = tr.batch(torch.arange(len(tr))), te.batch(torch.arange(len(te)))
    pen = linear_accuracy(btr.data['pen'].flatten(1), bte.data['pen'].flatten(1), btr.labels, bte.labels)
    street = linear_accuracy(street_features(btr.data['street']), street_features(bte.data['street']), btr.labels, bte.labels)
    assert pen >= 0.8 and street >= 0.8, (pen, street)


def test_generation_is_fast():
    glyph_bank(); generate_synthetic_digits(10, 0)                # warm the template banks
    t = time.process_time()
    generate_synthetic_digits(2000, 5)
    cpu = time.process_time() - t
    # the default 28,000 pairs must take well under 15 s of CPU time on one thread: 2,000 pairs < 1 s
    assert cpu * torch.get_num_threads() < 1.5, cpu
