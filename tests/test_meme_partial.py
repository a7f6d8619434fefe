"""MEME's partial-observation study (`mmvae_nb.papers.meme`): MNIST-street on the real MNIST (skips without it),
the grid and the claims' logic, and that the study's tables show the paper's numbers beside ours."""
import os
import numpy as np
import pytest
import torch

from mmvae_nb import data as D
from mmvae_nb.papers import meme as P

ROOT = os.environ.get('MMVAE_NB_DATA')
needs_mnist = pytest.mark.skipif(not ROOT or not D.available('mnist', ROOT, 'test'),
                                 reason="real-data test: MMVAE_NB_DATA unset or without MNIST (set MMVAE_NB_DATA=/work/shared/data)")


@needs_mnist
def test_mnist_street_pairs_real_mnist_with_street_by_class():
    test = P.mnist_street('test', root=ROOT)
    assert len(test) == 4000 and bool(test.mask.all())                   # min(#MNIST, #street) = 400 per class, all observed
    assert torch.equal(test.labels_of('mnist'), test.labels_of('street'))
    assert test.sources == {'mnist': 'mnist', 'street': 'synthetic_street'} and 'half synthetic' in test.name
    assert torch.bincount(test.labels).tolist() == [400] * 10
    part = P.mnist_street('train', f=0.0625, scheme='street', root=ROOT)
    assert len(part) == 24000
    assert abs(part.mask.all(1).float().mean().item() - 0.0625) < 1e-3
    assert bool(part.mask[:, 1].all())                                   # street always present
    assert not torch.equal(P.mnist_street('train', f=0.5, scheme='split', root=ROOT, seed=1).mask,
                           P.mnist_street('train', f=0.5, scheme='split', root=ROOT, seed=0).mask)


def test_grid_and_claims_logic():
    assert len(P.partial_grid()) == 27 and len(P.partial_grid(P.GRIDS['cpu'])) == 15
    # a made-up result where MEME wins everywhere and paired W2 is smaller: every claim holds
    rows = lambda c, l, w: [{'metric': 'cross_coherence', 'given': g, 'value': c} for g in P.MODALITIES] + \
        [{'metric': 'latent_accuracy', 'given': g, 'value': l} for g in P.MODALITIES] + \
        [{'metric': m, 'given': 'mnist', 'value': v} for m, v in zip(('w2_related_mean', 'w2_unrelated_mean', 'w2_auc'), w)]
    res = {}
    for mdl, sch, f in P.partial_grid(P.GRIDS['cpu']):
        good = 0.6 if mdl == 'MEME' else 0.2
        res[mdl, sch, f] = rows(good + (0.1 if sch == 'split' else 0), 0.8, (1.0, 3.0, 0.9))
    value = lambda *a: P.grid_value(res, *a)
    assert [c[1] for c in P.partial_claims(value, P.GRIDS['cpu'])] == [True, True, True]
    res['MEME', 'mnist', 0.0625] = rows(0.9, 0.9, (1.0, 3.0, 0.9))           # SPLIT no longer best at the lowest f
    res['MEME', 'paired', 1.0] = rows(0.6, 0.8, (3.0, 1.0, 0.1))              # paired farther apart than unpaired
    assert [c[1] for c in P.partial_claims(value, P.GRIDS['cpu'])] == [True, False, False]
    table = P.grid_table(value, 'cross_coherence', 'mnist', P.GRIDS['cpu'])
    assert '| MEME<sub>split</sub> | 0.600 (0.625) | 0.700 (0.503) | 0.700 (0.387) |' in table
    assert table.splitlines()[-1] == '| MMVAE | 0.200 (0.581) | – | – |'
