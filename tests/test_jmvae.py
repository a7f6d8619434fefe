"Independent checks of mmvae_nb.jmvae: eq. (1)-(2), KL vs Monte Carlo, gradient paths, masks, meta device, training."
import copy
import math
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.distributions import product_of_experts
from mmvae_nb.jmvae import JMVAE, JointEncoder, jmvae_objective
from mmvae_nb.models import meta_step
from mmvae_nb.networks import build_modalities

D = 4
SPECS = [ModalitySpec('img', (1, 28, 28)), ModalitySpec('label', (), 'categorical', n_classes=10)]
NAMES = ('img', 'label')


def make(alpha=0.1, specs=SPECS, **kw):
    torch.manual_seed(0)
    mods = build_modalities(specs, D, likelihood={'img': 'bernoulli'}, hidden=16)
    return JMVAE(mods, D, alpha=alpha, feature_dim=8, hidden=16, **kw)


def batch(B=6, mask=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (B,), generator=g)
    x = torch.rand(B, 1, 28, 28, generator=g)
    mask = torch.ones(B, 2, dtype=torch.bool) if mask is None else mask
    return Batch({'img': x, 'label': y}, mask, NAMES, labels=y)


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


def test_objective_is_eq_2():
    lp = torch.tensor([[-3., -4.], [-5., -6.]])
    out = jmvae_objective(lp, torch.tensor([.5, 1.]), torch.tensor([2., 3.]), alpha=0.5, beta=2.)
    assert torch.allclose(out, torch.tensor([-4. - 1. - 1., -5. - 2. - 1.5]))
    with pytest.raises(ValueError, match='alpha must be non-negative'):
        jmvae_objective(lp, torch.zeros(2), torch.zeros(2), alpha=-0.1)


def test_kl_to_unimodal_matches_monte_carlo():
    m = make()
    b = batch()
    with torch.no_grad():
        q = m.joint_encoding(b)
        for n, qn in m.unimodal_posteriors(b).items():
            z = q.sample((100_000,))
            mc = (q.log_prob(z) - qn.log_prob(z)).mean(0)
            closed = kl_divergence(q, qn)
            assert torch.allclose(closed, mc, rtol=0.03, atol=0.02), (n, closed, mc)


@pytest.mark.parametrize('alpha', [0., 0.1, 1.])
def test_loss_is_joint_elbo_minus_alpha_kl(alpha):
    m = make(alpha)
    b = batch()
    torch.manual_seed(5)
    loss, terms = m.loss(b)
    torch.manual_seed(5)
    q = m.joint_encoding(b)
    z = q.rsample((1,))
    lpx = m.mods['img'].likelihood(z).log_prob(b.data['img']) + m.mods['label'].likelihood(z).log_prob(b.data['label'])
    elbo = lpx[0] - kl_divergence(q, m.prior())
    kl = kl_divergence(q, m.unimodal_posteriors(b)['img']) + kl_divergence(q, m.unimodal_posteriors(b)['label'])
    assert torch.allclose(loss, -(elbo - alpha * kl).mean(), atol=1e-4)
    assert torch.allclose(terms['elbo'], elbo.mean(), atol=1e-4)


def test_unimodal_encoders_learn_only_through_kl():
    b = batch()
    m = make(0.3)
    torch.manual_seed(2)
    g = grads(m, m.loss(b)[0])
    q = m.joint_encoding(b)
    kl = sum(kl_divergence(q, p) for p in m.unimodal_posteriors(b).values()).mean()
    gk = grads(m, 0.3 * kl)
    keys = [k for k in g if k.startswith('mods.') and '.encoder.' in k]
    assert keys
    for k in keys:
        assert torch.allclose(g[k], gk[k], atol=1e-6), k
    m0 = make(0.)
    g0 = grads(m0, m0.loss(b)[0])
    assert all(g0[k].abs().max() == 0 for k in keys)
    assert g0['joint_encoder.loc.weight'].abs().sum() > 0 and g0['mods.label.decoder.body.0.weight'].abs().sum() > 0


def test_partially_observed_items_do_not_leak():
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0], [0, 1], [1, 1]]).bool()
    b = batch(mask=mask)
    x = b.data['img'].clone(); x[~mask[:, 0]] = float('nan')
    y = torch.where(mask[:, 1], b.data['label'], 9)
    bad = Batch({'img': x, 'label': y}, mask, NAMES)
    m = make()
    with torch.no_grad():
        q1, qs = m.posteriors(b)
        q2, _ = m.posteriors(bad)
    assert torch.allclose(q1.mean, q2.mean) and torch.allclose(q1.stddev, q2.stddev)
    assert torch.allclose(q1.mean[1], qs['img'].mean[1]) and torch.allclose(q1.mean[2], qs['label'].mean[2])
    torch.manual_seed(0); l1, _ = m.loss(b)
    torch.manual_seed(0); l2, _ = m.loss(bad)
    assert torch.isfinite(l2) and torch.allclose(l1, l2)


def test_unobserved_modality_gets_no_gradient():
    b = batch(mask=torch.tensor([[True, False]] * 6))
    m = make()
    g = grads(m, m.loss(b)[0])
    assert all(v.abs().max() == 0 for k, v in g.items() if k.startswith(('mods.label', 'joint_encoder')))
    assert g['mods.img.decoder.body.0.weight'].abs().sum() > 0
    mi = make(unpaired='ignore')
    gi = grads(mi, mi.loss(b)[0])            # nothing paired: nothing learns
    assert all(v.abs().max() == 0 for v in gi.values())


def test_zero_fill_uses_joint_encoder_everywhere():
    mask = torch.tensor([[1, 1], [1, 0], [0, 1]]).bool()
    b = batch(3, mask)
    m = make(0., subset_posterior='zero_fill')
    with torch.no_grad():
        assert torch.allclose(m.joint_posterior(b).mean, m.joint_encoding(b).mean)
        # zero-filled feature: item 1's posterior equals the one with its label removed from the batch
        only = Batch({'img': b.data['img']}, mask & torch.tensor([True, False]), NAMES)
        assert torch.allclose(m.joint_encoding(only).mean[1], m.joint_encoding(b).mean[1])


def test_three_modalities_subset_rule_and_meta():
    specs = SPECS + [ModalitySpec('mfcc', (13,), 'features')]
    m = make(specs=specs)
    b = Batch({'img': torch.rand(3, 1, 28, 28), 'label': torch.tensor([1, 2, 3]), 'mfcc': torch.randn(3, 13)},
              torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0]]).bool(), ('img', 'label', 'mfcc'))
    with torch.no_grad():
        q, qs = m.posteriors(b)
        loc, scale = product_of_experts(torch.stack([qs['label'].base_dist.loc, qs['mfcc'].base_dist.loc]),
                                        torch.stack([qs['label'].base_dist.scale, qs['mfcc'].base_dist.scale]), prior_expert=False)
    # precision-weighted product without prior: 1/s^2 = sum 1/s_i^2
    assert torch.allclose(q.stddev[1] ** -2, qs['label'].stddev[1] ** -2 + qs['mfcc'].stddev[1] ** -2, rtol=1e-4)
    assert torch.allclose(q.mean[1], loc[1], atol=1e-6)
    assert torch.allclose(q.mean[2], qs['img'].mean[2])
    assert meta_step(copy.deepcopy(m), b) == ()
    assert meta_step(make(), batch(4, torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]]).bool())) == ()


def test_bad_arguments():
    mods = build_modalities(SPECS, D, hidden=8)
    with pytest.raises(ValueError, match='subset_posterior'):
        JMVAE(mods, D, subset_posterior='poe')
    with pytest.raises(ValueError, match='unpaired'):
        JMVAE(mods, D, unpaired='drop')
    with pytest.raises(ValueError, match='feature_dim'):
        JointEncoder(mods, D, feature_dim=7)


def test_one_epoch_training_loss_falls():
    # 10 classes of a fixed random binary prototype image, paired with their label; 3/4 paired, 1/4 unpaired
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(10, 1, 28, 28, generator=g) > 0.5).float()
    y = torch.randint(0, 10, (256,), generator=g)
    x = (protos[y] + 0.05 * torch.randn(256, 1, 28, 28, generator=g)).clamp(0, 1)
    mask = torch.ones(256, 2, dtype=torch.bool)
    mask[192:224, 1] = False; mask[224:, 0] = False
    m = make(0.1)
    full = Batch({'img': x, 'label': y}, mask, NAMES)

    def dataset_loss():
        torch.manual_seed(0)
        with torch.no_grad(): return m.loss(full)[0].item()

    before = dataset_loss()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for epoch in range(3):
        perm = torch.randperm(256, generator=g)
        for i in range(0, 256, 32):
            idx = perm[i:i + 32]
            loss, _ = m.loss(Batch({'img': x[idx], 'label': y[idx]}, mask[idx], NAMES))
            opt.zero_grad(); loss.backward(); opt.step()
    after = dataset_loss()
    assert after < before - 25, (before, after)
