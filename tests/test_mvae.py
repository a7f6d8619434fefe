"Independent checks of mmvae_nb.mvae: PoE vs quadrature, subsets vs itertools, the subsampled objective, masks, training."
import copy
import itertools
import math
import pytest
import scipy.integrate
import scipy.stats
import torch
from torch.distributions import Independent, Normal, kl_divergence

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.models import meta_step
from mmvae_nb.mvae import MVAE, subset_membership, subsampled_elbo, subsets, valid_subsets
from mmvae_nb.networks import build_modalities

D = 3
SPECS = [ModalitySpec('a', (1, 28, 28)), ModalitySpec('b', (13,), 'features'),
         ModalitySpec('label', (), 'categorical', n_classes=10)]
NAMES = ('a', 'b', 'label')


def make(**kw):
    torch.manual_seed(0)
    mods = build_modalities(SPECS, D, likelihood={'a': 'bernoulli'}, hidden=16)
    return MVAE(mods, D, **kw)


def batch(B=5, mask=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    data = {'a': torch.rand(B, 1, 28, 28, generator=g), 'b': torch.randn(B, 13, generator=g),
            'label': torch.randint(0, 10, (B,), generator=g)}
    return Batch(data, torch.ones(B, 3, dtype=torch.bool) if mask is None else mask, NAMES)


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


def test_joint_posterior_is_prior_times_observed_experts_by_quadrature():
    m = make()
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0]]).bool()
    b = batch(3, mask)
    with torch.no_grad():
        q = m.joint_posterior(b)
        qs = m.unimodal_posteriors(b)
    for i in range(3):
        for d in range(D):
            experts = [scipy.stats.norm(qs[n].mean[i, d].item(), qs[n].stddev[i, d].item())
                       for j, n in enumerate(NAMES) if mask[i, j]]
            dens = lambda z: scipy.stats.norm.pdf(z) * math.prod(e.pdf(z) for e in experts)
            Z = scipy.integrate.quad(dens, -30, 30, points=[e.mean() for e in experts], limit=200)[0]
            mean = scipy.integrate.quad(lambda z: z * dens(z), -30, 30, points=[e.mean() for e in experts], limit=200)[0] / Z
            var = scipy.integrate.quad(lambda z: (z - mean) ** 2 * dens(z), -30, 30, points=[e.mean() for e in experts], limit=200)[0] / Z
            assert abs(q.mean[i, d].item() - mean) < 1e-4 and abs(q.variance[i, d].item() - var) < 1e-4


def test_subsets_against_itertools():
    names = ('x', 'y', 'z')
    every = subsets(names, 'all')
    assert len(every) == 7 == len(set(every))
    assert set(every) == {c for r in range(1, 4) for c in itertools.combinations(names, r)}
    assert subsets(names) == [names, ('x',), ('y',), ('z',)]
    four = ('p', 'q', 'r', 's')
    rand = subsets(four, k=200, generator=torch.Generator().manual_seed(1))[5:]
    assert len(rand) == 200 and all(2 <= len(s) <= 3 for s in rand)
    assert len(set(rand)) == 10          # all 6 pairs and 4 triples appear
    assert subsets(four, k=3, generator=torch.Generator().manual_seed(7)) == subsets(four, k=3, generator=torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match='k must be a non-negative integer'):
        subsets(names, k=-1)


def test_subsampled_elbo_and_valid_subsets():
    mem = subset_membership(subsets(NAMES, 'all'), NAMES)
    obs = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 1]]).bool()
    v = valid_subsets(mem, obs)
    assert v.sum(0).tolist() == [7, 3, 1]
    e = torch.randn(7, 3)
    e[~v] = float('-inf')
    out = subsampled_elbo(e, v)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.stack([e[v[:, b], b].sum() for b in range(3)]))


def test_loss_is_sum_of_subset_elbos_with_weights():
    torch.manual_seed(0)
    mods = build_modalities(SPECS, D, likelihood={'a': 'bernoulli'}, hidden=16, weight={'label': 20.})
    m = MVAE(mods, D, subset_mode='all', K=2)
    b = batch()
    subs = subsets(NAMES, 'all')
    torch.manual_seed(9); loss, _ = m.loss(b)
    torch.manual_seed(9); eps = torch.randn(2, len(subs), len(b), D)
    qs = m.unimodal_posteriors(b)
    total = 0
    for j, s in enumerate(subs):
        prec = 1 + sum(qs[n].stddev ** -2 for n in s)
        mu = sum(qs[n].mean * qs[n].stddev ** -2 for n in s) / prec
        q = Independent(Normal(mu, prec ** -0.5), 1)
        z = mu + prec ** -0.5 * eps[:, j]
        lpx = sum(m.mods[n].weight * m.mods[n].likelihood(z).log_prob(b.data[n]) for n in s)
        total = total + lpx.mean(0) - kl_divergence(q, m.prior())
    assert torch.allclose(loss, -total.mean(), rtol=1e-4)


def test_kl_scale_only_scales_kl():
    m = make()
    b = batch()
    torch.manual_seed(3); l1, _ = m.loss(b)
    m.kl_scale = 0.5
    torch.manual_seed(3); lh, _ = m.loss(b)
    m.kl_scale = 0.
    torch.manual_seed(3); l0, _ = m.loss(b)
    assert torch.allclose(lh, (l1 + l0) / 2, rtol=1e-5)   # linear in the KL weight
    assert l1 > l0


def test_missing_modality_never_leaks():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]]).bool()
    b = batch(mask=mask)
    a = b.data['a'].clone(); a[~mask[:, 0]] = float('nan')
    f = b.data['b'].clone(); f[~mask[:, 1]] = float('inf')
    bad = Batch({'a': a, 'b': f, 'label': torch.where(mask[:, 2], b.data['label'], 0)}, mask, NAMES)
    m = make(subset_mode='all')
    with torch.no_grad():
        assert torch.allclose(m.joint_posterior(b).mean, m.joint_posterior(bad).mean)
        single = m.joint_posterior(m.restrict(b.subset([1]), ['a']))
        assert torch.allclose(m.joint_posterior(b).stddev[1], single.stddev[0])
    torch.manual_seed(0); l1, _ = m.loss(b)
    torch.manual_seed(0); l2, _ = m.loss(bad)
    assert torch.isfinite(l2) and torch.allclose(l1, l2)
    g = grads(m, m.loss(Batch(b.data, mask & torch.tensor([True, False, True]), NAMES))[0])
    assert all(v.abs().max() == 0 for k, v in g.items() if k.startswith('mods.b.'))
    assert g['mods.a.encoder.loc.weight'].abs().sum() > 0


def test_meta_step():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1]]).bool()
    assert meta_step(make(k=2), batch(3, mask)) == ()
    assert meta_step(make(subset_mode='all'), batch(3)) == ()


def test_one_epoch_training_loss_falls():
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(10, 1, 28, 28, generator=g) > 0.5).float()
    feats = torch.randn(10, 13, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    data = {'a': (protos[y] + 0.05 * torch.randn(256, 1, 28, 28, generator=g)).clamp(0, 1),
            'b': feats[y] + 0.1 * torch.randn(256, 13, generator=g), 'label': y}
    mask = torch.ones(256, 3, dtype=torch.bool)
    mask[200:, 1] = False
    full = Batch(data, mask, NAMES)
    m = make(k=1)

    def dataset_loss():
        torch.manual_seed(0)
        with torch.no_grad(): return m.loss(full, subs=subsets(NAMES))[0].item()

    before = dataset_loss()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for epoch in range(3):
        perm = torch.randperm(256, generator=g)
        for i in range(0, 256, 32):
            loss, _ = m.loss(full.subset(perm[i:i + 32]))
            opt.zero_grad(); loss.backward(); opt.step()
    after = dataset_loss()
    assert after < before - 50, (before, after)
