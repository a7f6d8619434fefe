"Independent checks of mmvae_nb.mopoe: subsets vs brute force, subset PoEs vs numpy, reductions to PoE and MoE, masks, training."
import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.models import Modality, meta_step
from mmvae_nb.mvae import subsets, subset_membership
from mmvae_nb.mopoe import (MoPoE, available_subsets, subset_products,
                            uniform_subset_weights, subset_average, normalise_subsets)


from toy import (LinearEncoder as Enc, LinearDecoder as Dec, latent_problem, assert_loss_falls, nan_hidden,
                 assert_unobserved_gets_no_gradient, assert_loss_ignores_hidden)


SHAPES = {'a': (1, 3, 3), 'b': (2, 2, 2), 'c': (5,)}


def mods(names=('a', 'b'), D=2, weights=None):
    weights = weights or {n: 1.0 for n in names}
    out = []
    for n in names:
        kind = 'features' if len(SHAPES[n]) == 1 else 'image'
        sp = ModalitySpec(n, SHAPES[n], kind)
        out.append(Modality(sp, Enc(math.prod(sp.shape), D), Dec(D, sp.shape), weight=weights[n]))
    return out


def make_batch(mask, names=('a', 'b'), seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    return Batch({n: torch.rand(len(mask), *SHAPES[n], generator=g) for n in names}, mask, names)


def np_poe(mus, sds, prior):
    "Product of 1-D/diag Gaussians in numpy (with N(0,1) if prior)."
    T = sum(1 / s**2 for s in sds) + (1.0 if prior else 0.0)
    mu = sum(m / s**2 for m, s in zip(mus, sds)) / T
    return mu, 1 / np.sqrt(T)


@pytest.mark.parametrize('M', [1, 2, 3, 4, 5, 6])
def test_default_subsets_match_bitmask_enumeration(M):
    names = [f'm{i}' for i in range(M)]
    ps = normalise_subsets(None, names)
    assert MoPoE(mods(('a', 'b', 'c')), 2).subsets == normalise_subsets(None, ('a', 'b', 'c'))
    brute = [frozenset(names[j] for j in range(M) if i >> j & 1) for i in range(1, 2**M)]
    assert len(ps) == 2**M - 1 == len(set(map(frozenset, ps)))
    assert set(map(frozenset, ps)) == set(brute)
    assert all(s == tuple(n for n in names if n in s) for s in ps)


def test_available_subsets_is_subset_relation():
    names = ('a', 'b', 'c', 'd')
    ps = subsets(names, mode='all')
    obs = torch.rand(50, 4, generator=torch.Generator().manual_seed(1)) < 0.5
    got = available_subsets(obs, subset_membership(ps, names))
    for b in range(50):
        O = {n for n, o in zip(names, obs[b].tolist()) if o}
        assert got[b].tolist() == [set(s) <= O for s in ps]


def test_subset_products_against_numpy():
    torch.manual_seed(0)
    names = ('a', 'b', 'c')
    ps = subsets(names, mode='all')
    mem = subset_membership(ps, names)
    locs, scales = torch.randn(3, 5, 2, dtype=torch.float64), torch.rand(3, 5, 2, dtype=torch.float64) + 0.2
    for flags in (mem.all(-1), torch.zeros(7, dtype=torch.bool), torch.ones(7, dtype=torch.bool)):
        loc, scale = subset_products(locs, scales, mem, flags)
        for s, sub in enumerate(ps):
            idx = [names.index(n) for n in sub]
            mu, sd = np_poe([locs[i].numpy() for i in idx], [scales[i].numpy() for i in idx], bool(flags[s]))
            np.testing.assert_allclose(loc[s].numpy(), mu, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(scale[s].numpy(), sd, rtol=1e-10)


def test_weights_and_average():
    avail = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0]]).bool()
    w = uniform_subset_weights(avail)
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0)
    vals = torch.tensor([[1., 2., float('inf')], [3., float('nan'), 5.], [6., 7., 8.]])   # (S, B)
    out = subset_average(vals, w)
    np.testing.assert_allclose(out.numpy(), [(1 + 3 + 6) / 3, 2.0, 5.0])


def test_reduces_to_poe_elbo():
    torch.manual_seed(0)
    D, beta = 2, 2.5
    batch = make_batch(torch.ones(6, 2))
    for est in ('sample', 'stratified'):
        model = MoPoE(mods(D=D, weights={'a': 1.5, 'b': 0.5}), D, beta=beta, subsets=[('a', 'b')], estimator=est)
        qs = model.unimodal_posteriors(batch)
        mu, sd = np_poe([qs[n].base_dist.loc.detach().numpy() for n in 'ab'],
                        [qs[n].base_dist.scale.detach().numpy() for n in 'ab'], prior=True)
        q = model.joint_posterior(batch)
        np.testing.assert_allclose(q.mean.detach().numpy(), mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(q.experts[0].base_dist.scale.detach().numpy(), sd, rtol=1e-5)
        torch.manual_seed(5); loss, terms = model.loss(batch)
        torch.manual_seed(5)
        qp = Independent(Normal(torch.as_tensor(mu, dtype=torch.float32), torch.as_tensor(sd, dtype=torch.float32)), 1)
        z = qp.rsample()
        lpx = sum(m.weight * m.likelihood(z).log_prob(batch.data[m.name]) for m in model.mods.values())
        kl = kl_divergence(qp, Independent(Normal(torch.zeros(D), torch.ones(D)), 1))
        assert torch.allclose(loss, -(lpx - beta * kl).mean(), atol=1e-4)
        assert torch.allclose(terms['kl'], kl.mean(), atol=1e-5)


def test_reduces_to_moe_of_unimodal_posteriors():
    torch.manual_seed(1)
    D = 3
    model = MoPoE(mods(('a', 'b', 'c'), D=D), D, subsets=[['a'], ['b'], ['c']])
    batch = make_batch([[1, 1, 1], [1, 0, 1], [0, 1, 0]], names=('a', 'b', 'c'))
    qs = model.unimodal_posteriors(batch)
    q = model.joint_posterior(batch)
    z = torch.randn(3, D)
    lp = torch.stack([qs[n].log_prob(z) for n in 'abc'], -1)
    lp = torch.where(batch.mask, lp, -math.inf)
    ref = torch.logsumexp(lp, -1) - torch.log(batch.mask.sum(-1).float())
    assert torch.allclose(q.log_prob(z), ref, atol=1e-5)
    # the KL term is the per-item mean of the observed unimodal KLs
    _, terms = model.loss(batch)
    kls = torch.stack([kl_divergence(qs[n], model.prior()) for n in 'abc'], -1)
    per_item = (kls * batch.mask).sum(-1) / batch.mask.sum(-1)
    assert torch.allclose(terms['kl'], per_item.mean(), atol=1e-5)


def test_partial_items_use_only_their_subsets_and_never_leak():
    torch.manual_seed(2)
    D = 2
    model = MoPoE(mods(D=D), D)
    mask = torch.tensor([[1, 0], [0, 1], [1, 1]]).bool()
    b1 = make_batch(mask)
    b2 = nan_hidden(b1)
    q1, q2 = model.joint_posterior(b1), model.joint_posterior(b2)
    assert q1.mask.tolist() == [[False, True, False], [False, False, True], [True, True, True]]   # subsets ab, a, b
    assert torch.allclose(q1.mean, q2.mean)
    # item 0's posterior is a's unimodal posterior alone (no prior expert: {a} is not the full set)
    qa = model.unimodal_posteriors(b1)['a']
    assert torch.allclose(q1.mean[0], qa.mean[0])
    assert_loss_ignores_hidden(model, b1)
    # b unobserved everywhere: its networks get exactly zero gradient
    assert_unobserved_gets_no_gradient(model, b1, 'b')


def test_errors():
    with pytest.raises(ValueError, match='unknown modalities'):
        normalise_subsets([['a', 'x']], ('a', 'b'))
    with pytest.raises(ValueError, match='items observe no subset'):
        MoPoE(mods(), 2, subsets=[('a', 'b')]).loss(make_batch([[1, 0], [1, 1]]))
    with pytest.raises(ValueError, match="posterior must be 'normal'"):
        MoPoE(mods(), 2, posterior='laplace_softmax')


@pytest.mark.parametrize('estimator', ['sample', 'stratified'])
def test_meta_step(estimator):
    assert meta_step(MoPoE(mods(), 2, estimator=estimator), make_batch([[1, 1], [1, 0], [0, 1]])) == ()


def test_training_loss_falls():
    torch.manual_seed(0)
    data, mask = latent_problem({n: SHAPES[n] for n in ('a', 'b')}, N=256, D=2)   # partially observed items
    assert_loss_falls(MoPoE(mods(D=2), 2, beta=1.0), data, mask, steps=150)
