"""PolyMNIST rebuilt from MNIST and the background JPEGs (`data.rebuild_polymnist`): shapes, tuples that agree in class
but not in MNIST image, determinism by seed, crops of each modality's own background, the named fallbacks.
Real-data tests skip when the data root (`MMVAE_NB_DATA`) or its background folder is absent."""
import os
import warnings
from pathlib import Path

import pytest
import torch

from mmvae_nb import data as D

ROOT = os.environ.get('MMVAE_NB_DATA')
BG_DIR = Path(ROOT) / D.POLYMNIST_BACKGROUND_DIR if ROOT else None
needs_data = pytest.mark.skipif(
    not ROOT or not BG_DIR.is_dir() or not D.available('mnist', ROOT, 'test'),
    reason=f"real-data test: MMVAE_NB_DATA unset or without MNIST and {D.POLYMNIST_BACKGROUND_DIR}/ "
           f"(set MMVAE_NB_DATA=/work/shared/data)")
N = 300        # small builds: the first N MNIST test images


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp('cache')
    return D.rebuild_polymnist('test', n=N, seed=0, cache=cache), cache


@pytest.fixture(scope='module')
def mnist_test():
    return D.load_mnist('test', download=False)


@needs_data
def test_full_shapes_and_sizes():
    "The original sizes, 3x28x28 uint8 (the full builds are cached, so a second run only loads them)."
    for split, n in (('train', 60000), ('test', 10000)):
        sets = D.rebuild_polymnist(split)
        assert len(sets) == 5
        for s in sets:
            assert s.images.shape == (n, 3, 28, 28) and s.images.dtype == torch.uint8
            assert torch.equal(s.labels, sets[0].labels)
        assert torch.bincount(sets[0].labels, minlength=10).sum() == n


def _crop(bg, top, left): return bg[:, top:top + 28, left:left + 28]


@needs_data
def test_tuples_share_the_class_but_not_the_mnist_image(small, mnist_test):
    sets, _ = small
    labels = sets[0].labels
    assert all(torch.equal(s.labels, labels) for s in sets)          # class agreement across the 5 modalities
    idx = torch.stack([s.extra['mnist_index'] for s in sets])         # (5, N): the MNIST image each composite shows
    assert all(torch.equal(mnist_test.labels[idx[m]], labels) for m in range(5))
    for m in range(5): assert torch.equal(idx[m].sort().values, torch.arange(N))   # each MNIST image once per modality
    distinct = torch.tensor([len(set(idx[:, i].tolist())) for i in range(N)])
    assert (distinct > 1).all(), "some tuple shows the same MNIST image in every modality"
    assert distinct.float().mean() > 4      # classes of ~30 images: five independent draws rarely repeat one
    # the reported MNIST image is the one drawn: its binarised digit is exactly where the composite is inverted
    bgs = D.load_backgrounds(root=ROOT)
    for m in range(5):
        for i in range(0, N, 23):
            c = _crop(bgs[m], sets[m].extra['top'][i], sets[m].extra['left'][i])
            ink = mnist_test.images[idx[m, i], 0] > 128
            assert torch.equal(sets[m].images[i], torch.where(ink, 255 - c, c))


@needs_data
def test_pixels_away_from_the_digit_are_crops_of_their_own_background(small, mnist_test):
    "Checked exactly for a few items: off-digit pixels equal a 28x28 sub-image of the modality's own JPEG, not another's."
    sets, _ = small
    bgs = D.load_backgrounds(root=ROOT)
    for m in range(5):
        H, W = bgs[m].shape[1:]
        top, left = sets[m].extra['top'], sets[m].extra['left']
        assert int(top.min()) >= 0 and int(top.max()) <= H - 29 and int(left.max()) <= W - 29   # the authors' exclusive randint
        assert len(set(top.tolist())) > N // 2                           # random positions, not one crop
        for i in (0, 101, 299):
            ink = mnist_test.images[sets[m].extra['mnist_index'][i], 0] > 128
            off = ~ink
            own = _crop(bgs[m], top[i], left[i])
            assert torch.equal(sets[m].images[i][:, off], own[:, off])
            assert torch.equal(sets[m].images[i][:, ink], 255 - own[:, ink])
            o = bgs[(m + 1) % 5]                                     # the same position of another background does not fit
            if top[i] + 28 <= o.shape[1] and left[i] + 28 <= o.shape[2]:
                assert not torch.equal(sets[m].images[i][:, off], _crop(o, top[i], left[i])[:, off])


@needs_data
def test_deterministic_by_seed_and_cached(small, tmp_path):
    sets, cache = small
    again = D.rebuild_polymnist('test', n=N, seed=0, cache=tmp_path)     # rebuilt from scratch in another cache
    assert all(torch.equal(a.images, b.images) for a, b in zip(sets, again))
    other = D.rebuild_polymnist('test', n=N, seed=1, cache=tmp_path)
    assert not any(torch.equal(a.images, b.images) for a, b in zip(sets, other))
    # a second call decodes nothing: neither MNIST nor a JPEG is read
    orig = (D.load_mnist, D.load_backgrounds)
    try:
        D.load_mnist = D.load_backgrounds = lambda *a, **k: (_ for _ in ()).throw(AssertionError('decoded again'))
        cached = D.rebuild_polymnist('test', n=N, seed=0, cache=cache)
    finally: D.load_mnist, D.load_backgrounds = orig
    assert all(torch.equal(a.images, b.images) for a, b in zip(sets, cached))


@needs_data
def test_train_and_test_draws_differ_and_names():
    assert D.polymnist_background_files()[1] == D.POLYMNIST_M1_SUBSTITUTE == '05tree-736885_1280.jpg'
    assert D.polymnist_rebuilt_name() == 'PolyMNIST (rebuilt, m1 substituted by 05tree-736885_1280.jpg)'
    bgs = D.load_backgrounds(root=ROOT)
    assert [tuple(b.shape) for b in bgs] == [(3, 850, 1280), (3, 797, 1280), (3, 512, 512), (3, 719, 1280), (3, 853, 1280)]
    assert all(b.dtype == torch.uint8 for b in bgs)


def test_missing_background_names_folder_and_file(tmp_path):
    (tmp_path / D.POLYMNIST_BACKGROUND_DIR).mkdir(parents=True)
    with pytest.raises(D.MissingDataError) as e:
        D.load_backgrounds(root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / D.POLYMNIST_BACKGROUND_DIR) in msg and '00flowers-19830_1280.jpg' in msg and 'sbmae' in msg
    with pytest.raises(D.MissingDataError, match='05tree-736885_1280.jpg'):
        D.rebuild_polymnist('test', root=tmp_path)
    assert D.polymnist_kind(tmp_path) == 'standin'


def test_no_data_falls_back_to_the_named_standin(tmp_path, monkeypatch):
    "A clone without the data: polymnist_dataset warns and returns the procedural stand-in, named as such."
    from mmvae_nb.multimodal import polymnist_dataset
    g = torch.Generator().manual_seed(0)
    mn = D.ImageSet(torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(30) % 10, 'mnist')
    monkeypatch.setattr(D, 'load_mnist', lambda split, root=None, **k: mn)
    with pytest.warns(UserWarning, match='STAND-IN'):
        ds = polymnist_dataset('test', root=tmp_path)
    assert ds.synthetic and 'not the paper data' in ds.name and set(ds.sources.values()) == {'polymnist_standin'}
    with pytest.raises(ValueError, match='unknown PolyMNIST source'):
        polymnist_dataset('test', root=tmp_path, source='nope')


@needs_data
def test_polymnist_dataset_uses_the_rebuilt_set_when_released_files_are_absent():
    from mmvae_nb.multimodal import polymnist_dataset
    assert not D.available('polymnist', ROOT, 'test')
    assert D.polymnist_kind(ROOT, 'test') == 'rebuilt'
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                   # no stand-in warning
        ds = polymnist_dataset('test')
    assert ds.name == 'PolyMNIST (rebuilt, m1 substituted by 05tree-736885_1280.jpg), test'
    assert len(ds) == 10000 and ds.modalities == ('m0', 'm1', 'm2', 'm3', 'm4') and not ds.synthetic
    assert set(ds.sources.values()) == {'polymnist'}
