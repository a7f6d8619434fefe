"Independent checks of mmvae_nb.meme: stop-gradient gradient vs analytic, LogSumExp stability, the pseudo-sample prior's mass, missing-t gradients."
import math
import numpy as np
import pytest
import scipy.integrate
import torch

from mmvae_nb.core import Batch, ModalitySpec, seed_everything
from mmvae_nb.meme import (MEME, LinearGaussianPair, direction_bound, lse_log_qt_s, pseudo_prior_log_prob,
                           simplified_gradient_toy, partial_objective)
from mmvae_nb.models import meta_step
from mmvae_nb.networks import build_modalities

torch.set_num_threads(1)
F64 = torch.float64


def _toy_grads(toy, s, t, eps, w, detach):
    "d/dd and d/de of sum_i w_i direction_bound(z_i), z_i = cs + d + tau eps_i, by autograd."
    p = {k: v.clone().requires_grad_(k in ('d', 'e')) for k, v in toy.p.items()}
    z = p['c'] * s + p['d'] + p['tau'] * eps
    val = (w * direction_bound(**toy.terms(s, t, z, p), detach_ratio=detach)).sum()
    gd, ge = torch.autograd.grad(val, [p['d'], p['e']])
    return gd.item(), ge.item()


@pytest.mark.parametrize('params', [dict(), dict(a=0.7, sz=1.1, b=-0.8, ss=0.4, c=-0.6, d=0.3, tau=0.5, e=-1.2, om=0.6)])
def test_simplified_stop_gradient_matches_analytic(params):
    toy = LinearGaussianPair(**params)
    s, t = torch.tensor(0.8, dtype=F64), torch.tensor(-0.4, dtype=F64)
    ana = simplified_gradient_toy(toy, s, t)
    # my own quadrature: Gauss-Hermite (probabilists') nodes, independent of LinearGaussianPair.grid
    x, w = np.polynomial.hermite_e.hermegauss(160)
    eps, wts = torch.tensor(x, dtype=F64), torch.tensor(w / w.sum(), dtype=F64)
    gd, ge = _toy_grads(toy, s, t, eps, wts, detach=True)
    assert abs(gd - ana['d'].item()) < 1e-7 and abs(ge - ana['e'].item()) < 1e-7
    assert abs(ana['e'].item()) < 1e-10                        # the classifier's expected gradient cancels
    # Monte Carlo: the estimator itself, unbiased for the analytic value
    e_mc = torch.randn(40_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    per = np.array([_toy_grads(toy, s, t, c, torch.full_like(c, 1 / len(c)), True)[0] for c in e_mc.split(1000)])
    assert abs(per.mean() - ana['d'].item()) < 4 * per.std() / math.sqrt(len(per))
    # the full (non-detached) estimator differs: a missing detach would fail here
    fd, fe = _toy_grads(toy, s, t, eps, wts, detach=False)
    assert abs(fd - gd) > 1e-3 and abs(fe - ge) > 1e-3


def test_eq1_is_a_lower_bound_in_the_toy():
    g = torch.Generator().manual_seed(5)
    x, w = np.polynomial.hermite_e.hermegauss(160)
    eps, wts = torch.tensor(x, dtype=F64), torch.tensor(w / w.sum(), dtype=F64)
    for _ in range(50):
        r = torch.rand(9, generator=g, dtype=F64)
        toy = LinearGaussianPair(a=0.3 + 2 * r[0], sz=0.4 + r[1], b=0.3 + 2 * r[2], ss=0.4 + r[3], c=2 * r[4] - 1, d=r[5] - 0.5,
                                 tau=0.3 + r[6], e=2 * r[7] - 1, om=0.4 + r[8])
        s, t = torch.randn(2, generator=g, dtype=F64)
        p = toy.p
        T = toy.terms(s, t, p['c'] * s + p['d'] + p['tau'] * eps)
        bound = (wts * direction_bound(**T, log_pt=LinearGaussianPair.lnorm(t, 0 * t, torch.ones_like(t)))).sum()
        assert bound <= toy.log_joint(s, t) + 1e-9


def test_lse_with_posterior_sample_never_inf_where_naive_is():
    g = torch.Generator().manual_seed(1)
    K, B = 10, 4000
    fresh = -2000 + 300 * torch.randn(K, B, generator=g)
    lq0 = (-2000 + 300 * torch.randn(B, generator=g)).requires_grad_()
    f = -1500 + 50 * torch.randn(B, generator=g)
    naive_r = torch.exp(lq0 - lse_log_qt_s(lq0, fresh, include_posterior_sample=False))
    assert torch.isinf(naive_r).any() and not torch.isfinite((naive_r * f).mean())
    lqs = lse_log_qt_s(lq0, fresh)
    r = torch.exp(lq0 - lqs)
    val = (r * f + lqs).mean()
    grad, = torch.autograd.grad(val, lq0)
    assert torch.isfinite(r).all() and torch.isfinite(val) and torch.isfinite(grad).all()
    assert r.max() <= (K + 1) * (1 + 1e-3)
    # the estimate itself: LSE over the K+1 terms minus log(K+1)
    ref = torch.logsumexp(torch.cat([lq0.detach()[None], fresh]), 0) - math.log(K + 1)
    torch.testing.assert_close(lqs.detach(), ref)


def test_pseudo_sample_prior_integrates_to_one():
    locs = torch.tensor([[-1.0], [0.5], [2.0], [4.0]], dtype=F64)
    scales = torch.tensor([[0.4], [1.0], [0.3], [2.0]], dtype=F64)
    dens = lambda z: pseudo_prior_log_prob(torch.tensor([[z]], dtype=F64), locs, scales).exp().item()
    mass = scipy.integrate.quad(dens, -np.inf, np.inf, points=None, limit=200)[0]
    assert abs(mass - 1) < 1e-7
    # the log-density is that of the uniform mixture
    z = torch.tensor([[0.3]], dtype=F64)
    ref = math.log(np.mean([math.exp(torch.distributions.Normal(locs[i, 0], scales[i, 0]).log_prob(z[0, 0]).item()) for i in range(4)]))
    assert abs(pseudo_prior_log_prob(z, locs, scales).item() - ref) < 1e-12
    # 2-d, by a nested scipy quadrature
    l2 = torch.tensor([[0., 1.], [1.5, -0.5], [-1., -1.]], dtype=F64)
    s2 = torch.tensor([[0.5, 0.8], [1.2, 0.4], [0.7, 0.7]], dtype=F64)
    d2 = lambda y, x: pseudo_prior_log_prob(torch.tensor([[x, y]], dtype=F64), l2, s2).exp().item()
    mass2 = scipy.integrate.dblquad(d2, -12, 12, -12, 12, epsabs=1e-10)[0]
    assert abs(mass2 - 1) < 1e-6


SPECS = (ModalitySpec('s', (1, 28, 28)), ModalitySpec('t', (12,), 'features'))


def _model(**kw):
    torch.manual_seed(0)
    return MEME(build_modalities(SPECS, 3, hidden=16), 3, **{'n_pseudo': 5, 'K': 3, **kw})


def _data(B=6):
    g = torch.Generator().manual_seed(2)
    return {'s': torch.rand(B, 1, 28, 28, generator=g), 't': torch.randn(B, 12, generator=g)}


@pytest.mark.parametrize('with_t_data', [True, False])
def test_t_missing_batch_leaves_t_decoder_gradient_zero(with_t_data):
    d = _data()
    data = d if with_t_data else {'s': d['s']}
    b = Batch(data, torch.tensor([[True, False]] * 6), ('s', 't'))
    m = _model()
    m.zero_grad()
    loss, _ = m.loss(b)
    loss.backward()
    for n, p in m.mods['t'].decoder.named_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, n
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.mods['t'].encoder.parameters())   # prior via pseudo-samples
    assert m.pseudo['t'].grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.mods['s'].decoder.parameters() if p.ndim > 1)


def test_mixed_batch_t_decoder_learns_only_from_paired_items():
    d = _data()
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 1], [1, 0], [0, 1]]).bool()
    m = _model()
    m.zero_grad(); m.loss(Batch(d, mask, ('s', 't')))[0].backward()
    assert any(p.grad.abs().sum() > 0 for p in m.mods['t'].decoder.parameters())
    # the unpaired terms pick their items exactly
    l_bi, l_s, l_t = torch.full((6,), float('nan')), torch.full((6,), float('nan')), torch.full((6,), float('nan'))
    l_bi[0], l_s[[1, 2, 4]], l_t[[3, 5]] = 1., 2., 3.
    out = partial_objective(l_bi, l_s, l_t, mask[:, 0], mask[:, 1])
    torch.testing.assert_close(out, torch.tensor([1., 2., 2., 3., 2., 3.]))


def test_registry_and_meta_device():
    from mmvae_nb.experiments import ExperimentConfig, MODELS, build_model
    assert 'meme' in MODELS
    net = build_model(ExperimentConfig(model='meme', latent_dim=4, model_kwargs=dict(n_pseudo=4, K=2)), SPECS)
    assert isinstance(net, MEME) and net.latent_dim == 4
    b = Batch(_data(4), torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]]).bool(), ('s', 't'))
    assert meta_step(net, b) == ()
    seed_everything(0)
    loss, terms = _model().loss(b)
    assert torch.isfinite(loss) and {'bound', 'loglik_s', 'loglik_t'} <= set(terms)
