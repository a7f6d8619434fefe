"""Reference coherence classifiers: every target on the real data (skipping where absent), cache reuse, corrupt files,
the `sources` hand-over from datasets, and one training per classifier even under concurrent calls."""
import os
import threading
import warnings
from dataclasses import replace

import pytest
import torch

import mmvae_nb.classifiers as C
import mmvae_nb.reference_classifiers as R
import mmvae_nb.coherence as coh
from mmvae_nb import data as D
from mmvae_nb.core import ModalitySpec
from mmvae_nb.multimodal import MultimodalDataset

# Targets as the issue states them; written out here so that loosening a source's `target` cannot loosen the test.
TARGETS = {'mnist': 0.99, 'hoda': 0.99, 'kannada': 0.97, 'fashion_mnist': 0.90, 'fsdd': 0.90,
           'synthetic_pen': 0.98, 'synthetic_street': 0.98, 'polymnist_standin': 0.97, 'polymnist': 0.97}
# (training items, test items): the FULL splits (Kannada: Dig-MNIST + half the test split / the other half)
SIZES = {'mnist': (60000, 10000), 'hoda': (60000, 20000), 'kannada': (15240, 5000), 'fashion_mnist': (60000, 10000),
         'fsdd': (2700, 300), 'synthetic_pen': (24000, 4000), 'synthetic_street': (24000, 4000),
         'polymnist_standin': (60000, 50000), 'polymnist': (60000, 50000)}   # polymnist: the released files, else the rebuilt set
NEEDS_REAL_DATA = {'mnist', 'hoda', 'kannada', 'fsdd', 'polymnist_standin', 'polymnist'}


def skip_without_data(name):
    src = R.REFERENCE_SOURCES[name]
    if name == 'fashion_mnist':
        if not src.available(None):
            pytest.skip(f"Fashion-MNIST absent: neither {D.data_root()}/FashionMNIST/raw nor {D.FASHION_SYSTEM_DIR} "
                        "(apt-get install dataset-fashion-mnist)")
        return
    if name in NEEDS_REAL_DATA:
        if not os.environ.get('MMVAE_NB_DATA'): pytest.skip('MMVAE_NB_DATA unset: real-data test')
        if not src.available(None): pytest.skip(f"{name}: data files missing under {D.data_root()}")


@pytest.fixture(scope='session')
def ref_cache():
    """The package cache (`$MMVAE_NB_CACHE` or the user cache): reference classifiers are content-addressed and
    checksummed, so sharing them with notebooks and experiments is safe and saves retraining them."""
    return D.cache_dir()


@pytest.mark.parametrize('name', list(TARGETS))
def test_reference_classifier_meets_its_target_on_the_full_split(name, ref_cache):
    skip_without_data(name)
    clf = R.reference_classifier(name, cache=ref_cache)
    m = clf.meta
    print(f"{name}: accuracy {m['accuracy']:.4f} ({m['status']}; trained in {m['train_seconds']} s wall, "
          f"{m['train_cpu_seconds']} s CPU, {m['threads']} threads)")
    assert (m['n_train'], m['n_test']) == SIZES[name]
    # recompute the accuracy on the test split rather than trusting the stored number
    d = R.REFERENCE_SOURCES[name].load(None)
    acc = C.classifier_accuracy(clf, *d['test'])
    assert acc == pytest.approx(m['accuracy'], abs=1e-6)
    assert acc >= TARGETS[name], f"{name}: test accuracy {acc:.4f} below the target {TARGETS[name]}"
    assert m['data_sha256'] == R.reference_data_sha256(d) and m['sha256'] == C.state_dict_sha256(clf.net.state_dict())


def _fail(*a, **k): raise AssertionError('trained although a cached classifier exists')


def test_second_call_trains_nothing(ref_cache, monkeypatch):
    from mmvae_nb.synthetic import synthetic_digits
    first = R.reference_classifier('synthetic_pen', cache=ref_cache)          # trained or cached by the test above
    R.reference_classifier('synthetic_street', cache=ref_cache)
    monkeypatch.setattr(R, 'train_reference_net', _fail)
    monkeypatch.setattr(C, 'train_classifier', _fail)
    again = R.reference_classifier('synthetic_pen', cache=ref_cache)
    assert again.meta['status'] == 'cached' and again.meta['sha256'] == first.meta['sha256']
    # the experiments' path: a small cpu-scale dataset gets the same classifier, whatever `epochs` says
    train, test = synthetic_digits('train', n=100), synthetic_digits('test', n=50)
    clfs = R.load_or_train_classifiers(train, test, epochs=1, seed=3, cache=ref_cache)
    assert {n: c.meta['source'] for n, c in clfs.items()} == {'pen': 'synthetic_pen', 'street': 'synthetic_street'}
    assert {c.meta['status'] for c in clfs.values()} == {'cached'} and clfs['pen'].accuracy == first.accuracy
    assert clfs['street'].spec.name == 'street' and clfs['street'].meta['n_train'] == 24000


# --- cheap checks on a tiny source ------------------------------------------------------------------------------------

SPEC_A = ModalitySpec('a', (1, 16, 16), 'image')


def tiny_load(root=None):
    tr, te = C.template_dataset([SPEC_A], n=600, seed=0), C.template_dataset([SPEC_A], n=200, seed=1)
    return {'train': C.modality_items(tr, 'a'), 'test': C.modality_items(te, 'a'), 'about': 'templates'}


TINY = R.ReferenceSource('tiny_test', 'image', (1, 16, 16), tiny_load, epochs=3, batch_size=32, shift=1)


def test_a_corrupt_cached_file_is_detected_and_retrained(tmp_path):
    c1 = R.reference_classifier(TINY, cache=tmp_path)
    assert c1.meta['status'] == 'trained' and c1.accuracy > 0.9
    (f,) = (tmp_path / 'classifiers' / 'reference').glob('tiny_test-*.pt')
    blob = torch.load(f, weights_only=True)
    blob['state_dict']['body.0.weight'][0, 0, 0, 0] += 1e-4                   # one weight, slightly
    torch.save(blob, f)
    with pytest.warns(UserWarning, match='weight checksum mismatch'):
        c2 = R.reference_classifier(TINY, cache=tmp_path)
    assert c2.meta['status'] == 'trained' and c2.meta['sha256'] == c1.meta['sha256']   # same seed: same weights
    assert R.reference_classifier(TINY, cache=tmp_path).meta['status'] == 'cached'       # the good file was written back
    blob = torch.load(f, weights_only=True); blob['meta']['data_sha256'] = '0' * 64; torch.save(blob, f)
    with pytest.warns(UserWarning, match='data checksum mismatch'):
        assert R.reference_classifier(TINY, cache=tmp_path).meta['status'] == 'trained'
    f.write_bytes(f.read_bytes()[:200])                                        # truncated
    with pytest.warns(UserWarning, match='unusable'):
        assert R.reference_classifier(TINY, cache=tmp_path).meta['status'] == 'trained'
    assert not list(f.parent.glob('.*.tmp'))                                     # atomic writes leave no partial files


def test_new_data_or_recipe_is_a_new_file(tmp_path):
    R.reference_classifier(TINY, cache=tmp_path)
    R.reference_classifier(replace(TINY, epochs=2), cache=tmp_path)
    other = replace(TINY, load=lambda root: {**tiny_load(), 'test': C.modality_items(C.template_dataset([SPEC_A], n=50, seed=5), 'a')})
    R.reference_classifier(other, cache=tmp_path)
    assert len(list((tmp_path / 'classifiers' / 'reference').glob('tiny_test-*.pt'))) == 3


def test_concurrent_callers_train_once(tmp_path, monkeypatch):
    calls, real = [], R.train_reference_net
    monkeypatch.setattr(R, 'train_reference_net', lambda *a, **k: calls.append(1) or real(*a, **k))
    out = []
    threads = [threading.Thread(target=lambda: out.append(R.reference_classifier(TINY, cache=tmp_path))) for _ in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert len(calls) == 1 and sorted(c.meta['status'] for c in out) == ['cached', 'cached', 'trained']


def test_datasets_hand_their_sources_to_the_classifiers(tmp_path, monkeypatch):
    monkeypatch.setitem(R.REFERENCE_SOURCES, 'tiny_test', TINY)
    specs = (SPEC_A, ModalitySpec('b', (3, 16, 16), 'image'))
    train, test = C.template_dataset(specs, n=600, seed=0), C.template_dataset(specs, n=200, seed=1)
    tagged = train.replace(sources={'a': 'tiny_test'})
    clfs = R.load_or_train_classifiers(tagged.subset(torch.arange(300)), test, epochs=2, cache=tmp_path)
    assert clfs['a'].meta['source'] == 'tiny_test' and clfs['a'].meta['n_train'] == 600   # the source's full split
    assert 'source' not in clfs['b'].meta and clfs['b'].meta['n_train'] == 300             # no source: the dataset
    # coherence rows carry the accuracy of the classifier they used
    model = C.TemplateModel(specs, C.class_templates(specs), 'perfect')
    row = coh.cross_coherence(model, test, clfs, 'b', 'a')
    assert row['classifier_accuracy'] == clfs['a'].accuracy == R.reference_classifier(TINY, cache=tmp_path).accuracy
    assert 'source' not in R.load_or_train_classifiers(tagged, test, epochs=2, cache=tmp_path, reference=False)['a'].meta
    # an unknown source falls back silently (custom data); a misfit or absent data falls back with a warning
    assert 'source' not in R.load_or_train_classifiers(train.replace(sources={'a': 'nowhere'}), test, names=['a'], epochs=2, cache=tmp_path)['a'].meta
    with pytest.warns(UserWarning, match='does not fit reference'):
        R.load_or_train_classifiers(train.replace(sources={'b': 'tiny_test'}), test, names=['b'], epochs=2, cache=tmp_path)
    monkeypatch.setitem(R.REFERENCE_SOURCES, 'tiny_test', replace(TINY, available=lambda root: False))
    with pytest.warns(UserWarning, match='is not available'):
        R.load_or_train_classifiers(tagged, test, names=['a'], epochs=2, cache=tmp_path)


def test_polymnist_files_plug_in(tmp_path, monkeypatch):
    "A PolyMNIST in the data root (released or rebuilt) is used by `polymnist_dataset` through the 'polymnist' source."
    from mmvae_nb.multimodal import polymnist_dataset
    g = torch.Generator().manual_seed(0)
    root = tmp_path / 'data'
    for split, n in (('train', 100), ('test', 40)):
        mn = D.ImageSet(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(n) % 10, 'mnist')
        D.write_polymnist(D.build_polymnist(mn, D.procedural_backgrounds(5, size=64)), root, split)
    monkeypatch.setenv('MMVAE_NB_DATA', str(root))
    monkeypatch.setenv('MMVAE_NB_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setitem(R.REFERENCE_SOURCES, 'polymnist', replace(R.REFERENCE_SOURCES['polymnist'], epochs=1))
    poly = polymnist_dataset('test')
    clfs = R.load_or_train_classifiers(poly, None, names=['m0', 'm3'], cache=tmp_path / 'cache')
    assert {c.meta['source'] for c in clfs.values()} == {'polymnist'}
    assert (clfs['m0'].meta['n_train'], clfs['m0'].meta['n_test']) == (100, 5 * 40)   # train tuple i in modality i mod 5
    assert clfs['m0'].net is clfs['m3'].net                                           # one classifier for all modalities


def test_bad_input():
    with pytest.raises(ValueError, match="no reference source 'nope'"): R.reference_classifier('nope', cache=False)
    with pytest.raises(ValueError, match='classify images or features'):
        R.register_reference_source(R.ReferenceSource('x', 'sequence', (4,), load=None))
    with pytest.raises(ValueError, match='expected'):
        R.reference_classifier(replace(TINY, shape=(1, 20, 20)), cache=False)
    with pytest.raises(ValueError, match='sources must map'):
        MultimodalDataset({'a': torch.zeros(2, 3)}, [ModalitySpec('a', (3,), 'features')], torch.zeros(2, dtype=torch.long),
                          sources={'b': 'mnist'})
