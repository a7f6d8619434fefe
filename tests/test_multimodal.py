"""Tests of mmvae_nb.multimodal: the dataset type, the canonical MNIST-SVHN pairing, triplets by label,
partial observation, unrelated pairs and the batch iterator. Loaders are replaced by tiny fakes; one
real-data check (marked `realdata`) runs when MMVAE_NB_DATA points at the shared data folder."""
import math, os
import pytest
import torch
from mmvae_nb import data
from mmvae_nb.core import ModalitySpec, Batch
from mmvae_nb.data import ImageSet, FeatureSet
import mmvae_nb.multimodal as mm
from mmvae_nb.multimodal import (MultimodalDataset, pair_by_class, mnist_svhn, mnist_label, polymnist_dataset, cub_dataset,
                                 celeba_dataset, sample_by_label, farsi_kannada_speech, observation_mask, with_observation,
                                 unrelated_pairs, related_subset, concat, BatchIterator)

MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
SVHN_TRAIN = [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SVHN_TEST = [1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595]


def labels_with_counts(counts, seed):
    l = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return l[torch.randperm(len(l), generator=torch.Generator().manual_seed(seed))]


def image_set(n, c, h, seed, labels=None, name='x'):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g) if labels is None else labels
    return ImageSet(torch.randint(0, 256, (n, c, h, h), dtype=torch.uint8, generator=g), y, name)


def two_modal(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    specs = (ModalitySpec('a', (1, 4, 4)), ModalitySpec('b', (5,), 'features'))
    return MultimodalDataset({'a': torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g), 'b': torch.randn(n, 5, generator=g)},
                             specs, torch.arange(n) % 10, name='toy')


# ---------------------------------------------------------------- dataset type
def test_dataset_batch_converts_images_only():
    ds = two_modal()
    b = ds.batch(torch.tensor([3, 7]))
    assert isinstance(b, Batch) and b.names == ('a', 'b')
    assert b.data['a'].dtype == torch.float32 and float(b.data['a'].max()) <= 1.0
    torch.testing.assert_close(b.data['a'] * 255, ds.data['a'][[3, 7]].float())
    assert torch.equal(b.data['b'], ds.data['b'][[3, 7]])
    assert torch.equal(b.index, torch.tensor([3, 7])) and torch.equal(b.labels, torch.tensor([3, 7]))
    assert b.mask.all() and b.mask.shape == (2, 2)
    # a bool mask selects rows too
    assert len(ds.batch(ds.labels < 2)) == 4


def test_dataset_validation_messages():
    specs = (ModalitySpec('a', (1, 4, 4)), ModalitySpec('b', (5,), 'features'))
    a, b = torch.zeros(6, 1, 4, 4, dtype=torch.uint8), torch.zeros(6, 5)
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"modality 'b': items have shape \(4,\) but its spec declares \(5,\)"):
        MultimodalDataset({'a': a, 'b': torch.zeros(6, 4)}, specs, y)
    with pytest.raises(ValueError, match="modality 'a' has 5 items but there are 6 labels"):
        MultimodalDataset({'a': a[:5], 'b': b}, specs, y)
    with pytest.raises(ValueError, match="must be float"):
        MultimodalDataset({'a': a, 'b': b.long()}, specs, y)
    with pytest.raises(ValueError, match="indexes outside"):
        MultimodalDataset({'a': a, 'b': b}, specs, y, rows={'a': torch.full((6,), 6)})
    with pytest.raises(ValueError, match="mask must be bool"):
        MultimodalDataset({'a': a, 'b': b}, specs, y, mask=torch.ones(6, 3, dtype=torch.bool))
    # integer labels of another width are accepted as int64
    assert MultimodalDataset({'a': a, 'b': b}, specs, y.int()).labels.dtype == torch.int64


def test_subset_shares_items_and_concat():
    ds = two_modal()
    sub = ds.subset(torch.tensor([9, 2, 2]))
    assert sub.data['a'] is ds.data['a']
    assert torch.equal(sub.batch([0, 1]).data['b'], ds.data['b'][[9, 2]])
    both = concat([sub, ds.subset([0]).replace(related=torch.tensor([False]))])
    assert len(both) == 4 and both.related.tolist() == [True, True, True, False]
    assert torch.equal(both.item_index('b'), torch.tensor([9, 2, 2, 0]))
    with pytest.raises(ValueError, match='share their item tensors'):
        concat([ds, two_modal(seed=1)])


# ---------------------------------------------------------------- canonical pairing
def rand_match_on_idx(l1, idx1, l2, idx2, max_d=10000, dm=10):
    "MMVAE's bin/make-mnist-svhn-idx.py, transcribed (global torch RNG)."
    _idx1, _idx2 = [], []
    for l in l1.unique():
        l_idx1, l_idx2 = idx1[l1 == l], idx2[l2 == l]
        n = min(l_idx1.size(0), l_idx2.size(0), max_d)
        l_idx1, l_idx2 = l_idx1[:n], l_idx2[:n]
        for _ in range(dm):
            _idx1.append(l_idx1[torch.randperm(n)])
            _idx2.append(l_idx2[torch.randperm(n)])
    return torch.cat(_idx1), torch.cat(_idx2)


@pytest.mark.parametrize('ca,cb,base', [(MNIST_TRAIN, SVHN_TRAIN, 56068), (MNIST_TEST, SVHN_TEST, 10000)])
def test_pair_by_class_counts(ca, cb, base):
    la, lb = labels_with_counts(ca, 11), labels_with_counts(cb, 12)
    for dm in (1, 2):
        ia, ib = pair_by_class(la, lb, dm=dm, seed=4)
        assert len(ia) == len(ib) == base * dm
        assert torch.equal(la[ia], lb[ib])
        for idx, l in ((ia, la), (ib, lb)):
            times = torch.bincount(idx, minlength=len(l))
            assert int((times == dm).sum()) == base and int(((times != 0) & (times != dm)).sum()) == 0


def test_pair_by_class_matches_reference_transcription():
    la, lb = labels_with_counts([30, 50, 7, 12], 1), labels_with_counts([40, 10, 9, 3], 2)
    torch.manual_seed(123)
    l1, i1 = la.sort(stable=True); l2, i2 = lb.sort(stable=True)
    ref = rand_match_on_idx(l1, i1, l2, i2, max_d=25, dm=3)
    ours = pair_by_class(la, lb, dm=3, seed=123, max_per_class=25)
    assert torch.equal(ref[0], ours[0]) and torch.equal(ref[1], ours[1])
    # kept items are the first min(#a, #b, max) of each class in index order
    for c, n in enumerate([25, 10, 7, 3]):
        assert torch.equal(ours[0][la[ours[0]] == c].unique(), (la == c).nonzero().squeeze(1)[:n])


def test_pair_by_class_seeding_and_errors():
    la, lb = labels_with_counts([20] * 10, 1), labels_with_counts([20] * 10, 2)
    assert torch.equal(pair_by_class(la, lb, 1, seed=0)[1], pair_by_class(la, lb, 1, seed=0)[1])
    assert not torch.equal(pair_by_class(la, lb, 1, seed=0)[1], pair_by_class(la, lb, 1, seed=1)[1])
    with pytest.raises(ValueError, match='dm must be a positive integer'):
        pair_by_class(la, lb, dm=0)


@pytest.fixture
def fake_mnist_svhn(monkeypatch):
    m, s = image_set(40, 1, 28, 0, name='mnist'), image_set(60, 3, 32, 1, name='svhn')
    monkeypatch.setattr(data, 'load_mnist', lambda split, root=None: m)
    monkeypatch.setattr(data, 'load_svhn', lambda split, root=None: s)
    return m, s


def test_mnist_svhn_builds_and_caches(fake_mnist_svhn, tmp_path, monkeypatch):
    m, s = fake_mnist_svhn
    ds = mnist_svhn('test', dm=3, seed=2, cache=tmp_path)
    n_base = sum(min(int((m.labels == c).sum()), int((s.labels == c).sum())) for c in range(10))
    assert len(ds) == 3 * n_base and ds.modalities == ('mnist', 'svhn') and not ds.synthetic
    assert torch.equal(m.labels[ds.item_index('mnist')], s.labels[ds.item_index('svhn')])
    assert torch.equal(ds.labels, m.labels[ds.item_index('mnist')])
    f = tmp_path / 'pairs' / 'mnist-svhn-test-dm3-seed2-max10000.pt'
    assert f.is_file()
    # a second call reads the cache (pairing is not recomputed)
    def boom(*a, **k): raise AssertionError('pair_by_class called despite a valid cache')
    monkeypatch.setattr(mm, 'pair_by_class', boom)
    again = mnist_svhn('test', dm=3, seed=2, cache=tmp_path)
    assert torch.equal(again.item_index('svhn'), ds.item_index('svhn'))
    # a stale cache (different dataset size) is rebuilt
    monkeypatch.setattr(mm, 'pair_by_class', pair_by_class)
    monkeypatch.setattr(data, 'load_svhn', lambda split, root=None: image_set(61, 3, 32, 5, name='svhn'))
    fresh = mnist_svhn('test', dm=3, seed=2, cache=tmp_path)
    assert int(fresh.item_index('svhn').max()) < 61
    assert torch.equal(torch.load(f, weights_only=True)['payload']['svhn'], fresh.item_index('svhn'))
    # no caching at all
    assert len(mnist_svhn('test', dm=1, seed=2, cache=False)) == n_base
    assert not (tmp_path / 'pairs' / 'mnist-svhn-test-dm1-seed2-max10000.pt').exists()


def test_batch_of_mnist_svhn(fake_mnist_svhn):
    m, s = fake_mnist_svhn
    ds = mnist_svhn('train', cache=False)
    b = ds.batch(torch.arange(4))
    assert b.data['mnist'].shape == (4, 1, 28, 28) and b.data['svhn'].shape == (4, 3, 32, 32)
    torch.testing.assert_close(b.data['svhn'], s.images[ds.item_index('svhn')[:4]].float() / 255)


def test_mnist_label(fake_mnist_svhn):
    ds = mnist_label('test')
    assert ds.spec('label').kind == 'categorical' and ds.spec('label').n_classes == 10
    b = ds.batch(torch.arange(10))
    assert torch.equal(b.data['label'], b.labels) and b.data['label'].dtype == torch.int64


def test_polymnist_cub_celeba_wrappers(monkeypatch):
    y = torch.arange(8) % 10
    pm = [image_set(8, 3, 28, i, labels=y, name=f'm{i}') for i in range(5)]
    monkeypatch.setattr(data, 'load_polymnist', lambda split, root=None: pm)
    ds = polymnist_dataset('train')
    assert ds.modalities == tuple(f'm{i}' for i in range(5)) and len(ds) == 8
    assert torch.equal(ds.batch([5]).data['m2'] * 255, pm[2].images[[5]].float())
    monkeypatch.setattr(data, 'load_polymnist', lambda split, root=None: pm[:2] + [image_set(8, 3, 28, 9, labels=y.flip(0))])
    with pytest.raises(ValueError, match="'m2' is not aligned"):
        polymnist_dataset('train')

    feats, caps, img = torch.randn(4, 16), torch.randint(0, 50, (12, 7)), torch.arange(12) // 3
    fs = FeatureSet(feats[img], img.clone(), 'cub', {'captions': caps, 'vocab': ['w'] * 50, 'image_index': img, 'captions_per_image': 3})
    monkeypatch.setattr(data, 'load_cub', lambda split, root=None: fs)
    cub = cub_dataset('test')
    assert len(cub) == 12 and cub.spec('caption').kind == 'sequence' and cub.spec('caption').n_classes == 50
    assert cub.data['image'].shape == (4, 16)
    b = cub.batch([7, 11])
    assert torch.equal(b.data['image'], feats[[2, 3]]) and torch.equal(b.data['caption'], caps[[7, 11]])

    attrs = torch.randint(0, 2, (6, 40))
    monkeypatch.setattr(data, 'load_celeba', lambda split, root=None: ImageSet(torch.zeros(6, 3, 64, 64, dtype=torch.uint8), attrs, 'celeba'))
    cel = celeba_dataset('valid')
    assert cel.spec('attributes').kind == 'binary' and cel.labels.shape == (6, 40)
    assert torch.equal(cel.batch([4]).data['attributes'], attrs[[4]].float())


# ---------------------------------------------------------------- triplets by label
def test_sample_by_label_replacement_and_balance():
    la, lb = torch.arange(10).repeat_interleave(50), torch.arange(10).repeat_interleave(30)
    lc = torch.arange(10).repeat_interleave(4)
    (ia, ib, ic), y = sample_by_label([la, lb, lc], replace=(False, False, True), seed=1)
    assert len(y) == 300 and torch.bincount(y).tolist() == [30] * 10
    for idx, l in ((ia, la), (ib, lb), (ic, lc)): assert torch.equal(l[idx], y)
    assert torch.bincount(ia).max() == 1 and torch.bincount(ib).max() == 1 and torch.bincount(ic).max() > 1
    assert y[:30].unique().numel() > 1                       # classes are mixed, not in blocks
    (_, _), y2 = sample_by_label([la, lb], n=25, seed=0)
    assert torch.bincount(y2).tolist() == [3] * 5 + [2] * 5
    with pytest.raises(ValueError, match='only'):
        sample_by_label([la, lc], n_per_class=5)
    with pytest.raises(ValueError, match='give n or n_per_class'):
        sample_by_label([la], replace=True)
    a1, a2 = sample_by_label([la, lc], n=40, replace=(False, True), seed=7), sample_by_label([la, lc], n=40, replace=(False, True), seed=7)
    assert all(torch.equal(x, z) for x, z in zip(a1[0] + [a1[1]], a2[0] + [a2[1]]))


def test_farsi_kannada_speech(monkeypatch):
    hoda = image_set(80, 1, 28, 0, labels=torch.arange(80) % 10, name='hoda')
    kannada = image_set(50, 1, 28, 1, labels=torch.arange(50) % 10, name='kannada')
    fsdd = FeatureSet(torch.randn(30, 13), torch.arange(30) % 10, 'fsdd')
    monkeypatch.setattr(data, 'load_hoda', lambda split, root=None: hoda)
    monkeypatch.setattr(data, 'load_kannada', lambda split, root=None: kannada)
    monkeypatch.setattr(data, 'load_fsdd', lambda split, root=None: fsdd)
    ds = farsi_kannada_speech('test', seed=3)
    assert len(ds) == 50 and ds.modalities == ('farsi', 'kannada', 'speech')
    assert ds.spec('speech').kind == 'features' and ds.spec('speech').shape == (13,)
    for name, s in (('farsi', hoda), ('kannada', kannada), ('speech', fsdd)):
        assert torch.equal(s.labels[ds.item_index(name)], ds.labels)
    assert torch.bincount(ds.item_index('farsi')).max() == 1 and torch.bincount(ds.item_index('speech')).max() > 1
    assert len(farsi_kannada_speech('test', n=20)) == 20


REAL = os.environ.get('MMVAE_NB_DATA')


@pytest.mark.realdata
def test_farsi_kannada_speech_real_test_split():
    if not REAL or not all(data.available(n, REAL, 'test') for n in ('hoda', 'kannada', 'fsdd')):
        pytest.skip('MMVAE_NB_DATA does not hold Hoda, Kannada-MNIST and FSDD test files')
    ds = farsi_kannada_speech('test', root=REAL)
    assert len(ds) == 10000 and torch.bincount(ds.labels).tolist() == [1000] * 10
    b = ds.batch(torch.arange(16))
    assert b.data['farsi'].shape == (16, 1, 28, 28) and b.data['speech'].shape == (16, 13)


# ---------------------------------------------------------------- partial observation
@pytest.mark.parametrize('f', [0.0, 0.1, 0.25, 0.5, 1.0])
def test_observation_mask_schemes(f):
    n = 777
    n_f = int(math.floor(f * n + 0.5))
    for scheme in ('s', 't', 'split', 'x', 'y'):
        m = observation_mask(n, ('x', 'y'), f, scheme, seed=3)
        assert m.dtype == torch.bool and m.shape == (n, 2)
        assert bool(m.any(1).all())                    # never a row with nothing observed
        assert int(m.all(1).sum()) == n_f
    m = observation_mask(n, ('x', 'y'), f, 's', seed=3)
    assert bool(m[:, 0].all()) and int(m[:, 1].sum()) == n_f
    m = observation_mask(n, ('x', 'y'), f, 't', seed=3)
    assert bool(m[:, 1].all()) and int(m[:, 0].sum()) == n_f
    m = observation_mask(n, ('x', 'y'), f, 'split', seed=3)
    s_only, t_only = int((m[:, 0] & ~m[:, 1]).sum()), int((~m[:, 0] & m[:, 1]).sum())
    assert abs(s_only - t_only) <= 1 and s_only + t_only == n - n_f


def test_observation_mask_three_modalities_and_errors():
    m = observation_mask(90, ('a', 'b', 'c'), 0.0, 'split', seed=0)
    assert (m.sum(1) == 1).all() and m.sum(0).tolist() == [30, 30, 30]
    assert not torch.equal(observation_mask(50, 'ab', 0.5, seed=0), observation_mask(50, 'ab', 0.5, seed=1))
    with pytest.raises(ValueError, match='must be in'):
        observation_mask(10, ('a', 'b'), -0.1)
    with pytest.raises(ValueError, match='unknown observation scheme'):
        observation_mask(10, ('a', 'b'), 0.5, 'u')
    ds = with_observation(two_modal(40), 0.25, 'split', seed=0)
    assert int(ds.mask.all(1).sum()) == 10 and torch.equal(ds.batch(torch.arange(40)).mask, ds.mask)


# ---------------------------------------------------------------- unrelated pairs
def paired_fake(dm=2):
    la, lb = labels_with_counts([30, 20, 25, 10, 15], 3), labels_with_counts([25, 30, 20, 15, 10], 4)
    ia, ib = pair_by_class(la, lb, dm=dm, seed=0)
    specs = (ModalitySpec('p', (2,), 'features'), ModalitySpec('q', (3,), 'features'))
    return MultimodalDataset({'p': torch.randn(len(la), 2), 'q': torch.randn(len(lb), 3)}, specs, la[ia],
                             rows={'p': ia, 'q': ib}), la, lb


def test_unrelated_pairs_different_class_is_a_class_changing_permutation():
    ds, la, lb = paired_fake()
    un = unrelated_pairs(ds, seed=5, different_class=True)
    assert not un.related.any()
    assert bool((un.labels_of('q') != un.labels).all())
    assert torch.equal(lb[un.item_index('q')], un.labels_of('q'))
    assert torch.equal(un.item_index('p'), ds.item_index('p'))
    assert torch.equal(torch.bincount(un.item_index('q'), minlength=len(lb)), torch.bincount(ds.item_index('q'), minlength=len(lb)))
    assert torch.equal(unrelated_pairs(ds, seed=5, different_class=True).item_index('q'), un.item_index('q'))
    un_p = unrelated_pairs(ds, seed=1, modality='p', different_class=True)
    assert torch.equal(un_p.item_index('q'), ds.item_index('q')) and bool((un_p.labels_of('p') != un_p.labels).all())


def test_unrelated_pairs_default_is_random_pairing():
    "Seed 000: unrelated pairs are 'constructed through random pairing' -- same-class pairs occur at chance rate."
    ds, la, lb = paired_fake()
    un = unrelated_pairs(ds, seed=5)
    assert not un.related.any()
    assert bool((un.item_index('q') != ds.item_index('q')).all())          # never the original partner
    same = (un.labels_of('q') == un.labels).float().mean().item()
    assert 0.05 < same < 0.45                                                # 5 unbalanced classes: chance ~0.2
    assert torch.equal(torch.bincount(un.item_index('q'), minlength=len(lb)), torch.bincount(ds.item_index('q'), minlength=len(lb)))


def test_unrelated_pairs_infeasible():
    ds, _, _ = paired_fake()
    with pytest.raises(ValueError, match='no unrelated pairing exists'):
        unrelated_pairs(ds.subset(ds.labels == 0), different_class=True)
    with pytest.raises(ValueError, match='unknown modality'):
        unrelated_pairs(ds, modality='r')


def test_related_subset():
    ds, _, _ = paired_fake()
    r = related_subset(ds, 0.2, seed=0)
    assert len(r) == round(0.2 * len(ds)) and r.related.all()
    mix = related_subset(ds, 0.3, seed=1, keep_unrelated=True)
    assert len(mix) == len(ds)
    assert abs(mix.related.float().mean().item() - 0.3) < 0.01
    assert bool((mix.labels_of('q') == mix.labels)[mix.related].all())
    strict = related_subset(ds, 0.3, seed=1, keep_unrelated=True, different_class=True)
    assert bool((strict.labels_of('q') != strict.labels)[~strict.related].all())
    with pytest.raises(ValueError, match='fraction must be in'):
        related_subset(ds, 1.5)


# ---------------------------------------------------------------- batch iterator
def test_iterator_epochs_and_reproducibility():
    ds = with_observation(two_modal(103), 0.5, 'split', seed=0)
    it = BatchIterator(ds, 10, seed=4, device='cpu')
    assert len(it) == 11
    ep0 = [b for b in it]
    assert [len(b) for b in ep0] == [10] * 10 + [3]
    rows = torch.cat([b.index for b in ep0])
    assert torch.equal(rows, torch.randperm(103, generator=torch.Generator().manual_seed(4)))
    for b in ep0:
        assert torch.equal(b.mask, ds.mask[b.index]) and torch.equal(b.data['b'], ds.data['b'][b.index])
    assert it.state_dict()['epoch'] == 1 and it.state_dict()['position'] == 0
    ep1 = torch.cat([b.index for b in it])
    assert torch.equal(ep1, torch.randperm(103, generator=torch.Generator().manual_seed(5)))
    assert len(list(BatchIterator(ds, 10, drop_last=True, device='cpu'))) == 10
    assert torch.equal(torch.cat([b.index for b in BatchIterator(ds, 10, shuffle=False, device='cpu')]), torch.arange(103))
    # the global RNG is neither used nor disturbed
    torch.manual_seed(0); a = torch.rand(1); torch.manual_seed(0); list(BatchIterator(ds, 7, device='cpu')); assert torch.equal(torch.rand(1), a)


def test_iterator_resume_mid_epoch_and_at_epoch_end():
    ds = two_modal(50)
    ref = [b.index for _ in range(2) for b in BatchIterator(ds, 8, seed=2, device='cpu')]   # two fresh epoch-0 runs
    full = BatchIterator(ds, 8, seed=2, device='cpu')
    two_epochs = [b.index for b in full] + [b.index for b in full]
    it = BatchIterator(ds, 8, seed=2, device='cpu')
    got = []
    for i, b in enumerate(it):
        got.append(b.index)
        if i == 3: break
    state = it.state_dict()
    assert (state['epoch'], state['position']) == (0, 32)
    it2 = BatchIterator(ds, 8, seed=2, device='cpu'); it2.load_state_dict(state)
    got += [b.index for b in it2] + [b.index for b in it2]
    assert all(torch.equal(x, y) for x, y in zip(got, two_epochs)) and len(got) == len(two_epochs)
    assert torch.equal(torch.cat(ref[:7]), torch.cat(two_epochs[:7]))
    # a state saved after the last batch of an epoch resumes at the next epoch
    it3 = BatchIterator(ds, 8, seed=2, device='cpu'); list(it3)
    it4 = BatchIterator(ds, 8, seed=2, device='cpu'); it4.load_state_dict({**it3.state_dict(), 'epoch': 0, 'position': 50})
    assert torch.equal(torch.cat([b.index for b in it4]), torch.cat(two_epochs[7:]))
    with pytest.raises(ValueError, match='cannot resume'):
        BatchIterator(two_modal(51), 8, seed=2, device='cpu').load_state_dict(state)


def test_iterator_distributed_shards():
    ds = two_modal(100)
    for drop_last in (False, True):
        shards = [torch.cat([b.index for b in BatchIterator(ds, 6, seed=9, rank=r, world_size=3, drop_last=drop_last, device='cpu')])
                  for r in range(3)]
        lens = {len(s) for s in shards}
        assert len(lens) == 1                                             # equal work per rank
        perm = torch.randperm(100, generator=torch.Generator().manual_seed(9))
        if drop_last:
            assert len(set(torch.cat(shards).tolist())) == sum(map(len, shards))   # disjoint
            assert torch.equal(shards[1], perm[:99][1::3][:len(shards[1])])
        else:
            assert set(torch.cat(shards).tolist()) == set(range(100))             # cover every row
            assert torch.equal(shards[2], torch.cat([perm, perm[:2]])[2::3])
    with pytest.raises(ValueError, match='rank < world_size'):
        BatchIterator(ds, 4, rank=2, world_size=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_iterator_device_resident_on_gpu():
    ds = two_modal(64)
    it = BatchIterator(ds, 16, device='cuda')
    assert it.dataset.data['a'].is_cuda and it.dataset.data['a'].dtype == torch.uint8
    for b in it: assert b.data['a'].is_cuda and b.mask.is_cuda and b.index.is_cuda
