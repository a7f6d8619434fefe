"Independent checks of mmvae_nb.distributions (closed forms vs. scipy / brute force / Monte Carlo)."
import math
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats
import torch
from torch.distributions import Laplace, Normal

from mmvae_nb.distributions import (diag_normal, kl_diag, mixture_log_prob, normal_from_raw, pairwise_w2_diag_gaussian,
                                    product_of_experts, softmax_laplace, stratified_mixture_sample, w2_diag_gaussian)

f64 = dict(dtype=torch.float64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- posteriors -----------------------------------------------------------------------------------------------------

def test_diag_normal_matches_scipy_and_rejects_bad_input():
    loc, scale = torch.randn(3, 4, **f64), torch.rand(3, 4, **f64) + .1
    z = torch.randn(3, 4, **f64)
    np.testing.assert_allclose(diag_normal(loc, scale).log_prob(z).numpy(), scipy.stats.norm(loc, scale).logpdf(z), rtol=1e-12)
    with pytest.raises(ValueError, match='scale must be positive'):
        diag_normal(loc, scale - 1.)
    with pytest.raises(ValueError, match='same shape'):
        diag_normal(loc, scale[:, :2])
    assert diag_normal(loc.to('meta'), scale.to('meta')).rsample().device.type == 'meta'


def test_normal_from_raw_is_softplus_plus_floor():
    raw = torch.tensor([-1e3, -3., 0., 3., 80.], **f64)
    q = normal_from_raw(torch.zeros(5, **f64), raw, min_scale=1e-4)
    np.testing.assert_allclose(q.scale.numpy(), np.logaddexp(0, raw.numpy()) + 1e-4, rtol=1e-12)


def test_softmax_laplace_scales_sum_to_D_and_match_scipy():
    D = 20
    loc, logits = torch.randn(8, D, **f64), 4 * torch.randn(8, D, **f64)
    q = softmax_laplace(loc, logits)
    assert isinstance(q, Laplace)
    np.testing.assert_allclose(q.scale.sum(-1).numpy(), D + D * 1e-6, rtol=1e-10)
    z = torch.randn(8, D, **f64)
    lg = logits.numpy()
    b = np.exp(lg - lg.max(-1, keepdims=True)); b = b / b.sum(-1, keepdims=True) * D + 1e-6
    expected = -np.log(2 * b) - np.abs(z.numpy() - loc.numpy()) / b   # scipy's laplace.logpdf underflows to -inf for tiny b
    np.testing.assert_allclose(q.log_prob(z).numpy(), expected, rtol=1e-10)


def test_rsample_gradients_reach_parameters():
    loc = torch.zeros(1000, 2, requires_grad=True)
    raw = torch.zeros(1000, 2, requires_grad=True)
    q = normal_from_raw(loc, raw)
    z = q.rsample()
    (z ** 2).mean().backward()
    assert torch.allclose(loc.grad, 2 * z.detach() / z.numel())
    assert raw.grad.abs().sum() > 0


# --- KL -------------------------------------------------------------------------------------------------------------

def _kl_quad(logq, logp, lo=-40, hi=40):
    "KL(q||p) in 1-D by numerical quadrature."
    return scipy.integrate.quad(lambda x: math.exp(logq(x)) * (logq(x) - logp(x)), lo, hi, limit=400, points=[0.])[0]


@pytest.mark.parametrize('family', ['normal', 'laplace'])
def test_kl_diag_equals_quadrature(family):
    m1, m2 = np.array([0.3, -1.0, 2.0]), np.array([-0.5, 0.4, 2.0])
    s1, s2 = np.array([0.7, 1.5, 0.4]), np.array([1.2, 0.6, 0.4])
    dist, sp = (Normal, scipy.stats.norm) if family == 'normal' else (Laplace, scipy.stats.laplace)
    got = kl_diag(dist(torch.tensor(m1), torch.tensor(s1)), dist(torch.tensor(m2), torch.tensor(s2))).item()
    want = sum(_kl_quad(sp(a, b).logpdf, sp(c, d).logpdf) for a, b, c, d in zip(m1, s1, m2, s2))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)


def test_kl_diag_mc_and_reduction():
    q = diag_normal(torch.randn(4, 6, **f64), torch.rand(4, 6, **f64) + .4)
    p = diag_normal(torch.zeros(6, **f64), torch.ones(6, **f64))
    kl = kl_diag(q, p)
    assert kl.shape == (4,)
    z = q.sample((50_000,))
    lw = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    se = lw.std(0) / math.sqrt(z.shape[0])
    assert ((lw.mean(0) - kl).abs() < 5 * se).all()


# --- product of experts ---------------------------------------------------------------------------------------------

def _poe_reference(mu, sd, present, prior=True):
    "Textbook precision-weighted product in float64 numpy."
    T = [1.0] if prior else []; num = [0.0] if prior else []
    for m, s, p in zip(mu, sd, present):
        if p: T.append(1 / s ** 2); num.append(m / s ** 2)
    return sum(num) / sum(T), 1 / math.sqrt(sum(T))


def test_poe_matches_reference_per_row_with_masks():
    E, B, D = 4, 6, 3
    locs, scales = torch.randn(E, B, D, **f64), torch.rand(E, B, D, **f64) + .2
    mask = torch.rand(B, E) > .4
    mask[0] = False            # only the prior expert
    mask[1] = True
    loc, scale = product_of_experts(locs, scales, mask)
    for b in range(B):
        for d in range(D):
            m, s = _poe_reference(locs[:, b, d].tolist(), scales[:, b, d].tolist(), mask[b].tolist())
            assert loc[b, d].item() == pytest.approx(m, rel=1e-10, abs=1e-12)
            assert scale[b, d].item() == pytest.approx(s, rel=1e-10)
    assert torch.equal(loc[0], torch.zeros(D, **f64)) and torch.equal(scale[0], torch.ones(D, **f64))


def test_poe_grid_density_product():
    mu, sd = [2.0, -1.0], [0.6, 1.4]
    z = np.linspace(-15, 15, 60_001)
    logd = scipy.stats.norm.logpdf(z) + sum(scipy.stats.norm.logpdf(z, m, s) for m, s in zip(mu, sd))
    w = np.exp(logd - logd.max()); w /= w.sum()
    mean = (w * z).sum(); var = (w * (z - mean) ** 2).sum()
    loc, scale = product_of_experts(torch.tensor(mu, **f64).view(2, 1), torch.tensor(sd, **f64).view(2, 1))
    assert loc.item() == pytest.approx(mean, abs=1e-7) and scale.item() ** 2 == pytest.approx(var, abs=1e-7)
    loc_np, scale_np = product_of_experts(torch.tensor(mu, **f64).view(2, 1), torch.tensor(sd, **f64).view(2, 1), prior_expert=False)
    assert abs(scale_np.item() ** 2 - var) > 0.05        # dropping the prior expert is detectably wrong


def test_poe_stable_and_nan_free_gradients():
    locs = torch.tensor([[1.0], [3.0], [float('nan')]], requires_grad=True)
    scales = torch.tensor([[1e-25], [1e-25], [0.0]], requires_grad=True)
    loc, scale = product_of_experts(locs, scales, mask=torch.tensor([True, True, False]))
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all() and loc.dtype == torch.float32
    assert loc.item() == pytest.approx(2.0) and scale.item() == pytest.approx(1e-25 / math.sqrt(2), rel=1e-4)
    (loc.sum() + scale.sum()).backward()
    assert torch.isfinite(locs.grad).all() and torch.isfinite(scales.grad).all()
    assert locs.grad[2].item() == 0 and scales.grad[2].item() == 0


def test_poe_bad_input():
    z, s = torch.zeros(3, 5, 2), torch.ones(3, 5, 2)
    with pytest.raises(ValueError, match='empty expert set'):
        product_of_experts(z[:0], s[:0])
    m = torch.ones(5, 3, dtype=torch.bool); m[2] = False
    with pytest.raises(ValueError, match='empty expert set'):
        product_of_experts(z, s, m, prior_expert=False)
    product_of_experts(z, s, m, prior_expert=True)       # with the prior expert an all-missing row is fine
    with pytest.raises(ValueError, match='must be positive'):
        product_of_experts(z, s * 0)
    with pytest.raises(ValueError, match='same shape'):
        product_of_experts(z, s[:, :4])
    with pytest.raises(ValueError, match='mask must be bool'):
        product_of_experts(z, s, m.float())


# --- mixture of experts ---------------------------------------------------------------------------------------------

def test_mixture_log_prob_brute_force_and_mask():
    E, B, D = 3, 5, 2
    locs, scales = torch.randn(E, B, D, **f64), torch.rand(E, B, D, **f64) + .5
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]]).bool()
    z = 2 * torch.randn(7, B, D, **f64)
    dens = np.stack([scipy.stats.laplace(locs[e], scales[e]).pdf(z.numpy()).prod(-1) for e in range(E)], -1)
    want = np.log((dens * mask.numpy()).sum(-1) / mask.numpy().sum(-1))
    dists = [Laplace(locs[e], scales[e]) for e in range(E)]
    np.testing.assert_allclose(mixture_log_prob(z, dists, mask).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(mixture_log_prob(z, Laplace(locs, scales), mask).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(mixture_log_prob(z, dists).numpy(), np.log(dens.mean(-1)), rtol=1e-10)
    with pytest.raises(ValueError, match='empty expert set'):
        mixture_log_prob(z, dists, torch.zeros(B, E, dtype=torch.bool))


def test_stratified_sample_shape_and_unbiased_mean():
    mu = torch.tensor([[-3.0], [0.0], [4.0]], **f64)           # E = 3, batch (), D = 1
    dists = [Normal(mu[e], torch.ones(1, **f64)) for e in range(3)]
    K = 30_000
    z = stratified_mixture_sample(dists, K)
    assert z.shape == (3, K, 1)
    # E_mix[z^2] = mean(mu^2 + 1); each expert contributes exactly K samples
    est = (z ** 2).mean()
    se = ((z ** 2).var(1).mean() / (3 * K)).sqrt()
    assert abs(est - ((mu ** 2).mean() + 1)) < 5 * se
    # ancestral sampling agrees within MC error
    idx = torch.randint(3, (3 * K,))
    anc = mu[idx, 0] + torch.randn(3 * K, **f64)
    se_a = (anc ** 2).std() / math.sqrt(3 * K)
    assert abs(est - (anc ** 2).mean()) < 5 * math.sqrt(se ** 2 + se_a ** 2)
    with pytest.raises(ValueError, match='empty expert set'):
        stratified_mixture_sample([], 2)


# --- 2-Wasserstein --------------------------------------------------------------------------------------------------

def test_w2_equals_general_formula_sqrtm():
    g = np.random.default_rng(0)
    for _ in range(3):
        m1, m2 = g.normal(size=5), g.normal(size=5)
        s1, s2 = g.uniform(.1, 2, size=5), g.uniform(.1, 2, size=5)
        S1, S2 = np.diag(s1 ** 2), np.diag(s2 ** 2)
        r = scipy.linalg.sqrtm(S2)
        want = math.sqrt(((m1 - m2) ** 2).sum() + np.trace(S1 + S2 - 2 * scipy.linalg.sqrtm(r @ S1 @ r).real))
        got = w2_diag_gaussian(*(torch.tensor(a) for a in (m1, s1, m2, s2))).item()
        assert got == pytest.approx(want, rel=1e-8)


def test_w2_1d_quantile_formula():
    a, sa, b, sb = 1.3, 0.4, -0.2, 2.1
    val = scipy.integrate.quad(lambda u: (scipy.stats.norm.ppf(u, a, sa) - scipy.stats.norm.ppf(u, b, sb)) ** 2, 0, 1, limit=200)[0]
    got = w2_diag_gaussian(*(torch.tensor([v], **f64) for v in (a, sa, b, sb))).item()
    assert got == pytest.approx(math.sqrt(val), rel=1e-6)
    assert abs(math.sqrt((a + b) ** 2 + (sa - sb) ** 2) - got) > 0.1   # the m1 + m2 misprint


def test_pairwise_w2_exact_symmetric_zero_on_diagonal():
    L1, S1 = torch.randn(40, 8), torch.rand(40, 8) + .1      # > 25 rows: cdist would use the mm shortcut by default
    L2, S2 = torch.randn(30, 8), torch.rand(30, 8) + .1
    P = pairwise_w2_diag_gaussian(L1, S1, L2, S2)
    assert P.shape == (40, 30)
    ref = torch.stack([torch.stack([w2_diag_gaussian(L1[i], S1[i], L2[j], S2[j]) for j in range(30)]) for i in range(40)])
    assert torch.allclose(P, ref, atol=1e-5)
    assert torch.allclose(P, pairwise_w2_diag_gaussian(L2, S2, L1, S1).T)
    self_d = pairwise_w2_diag_gaussian(L1, S1, L1, S1)
    assert torch.equal(self_d.diagonal(), torch.zeros(40))
    assert (self_d + torch.eye(40)).min() > 0
    with pytest.raises(ValueError, match='scale2 must be positive'):
        pairwise_w2_diag_gaussian(L1, S1, L2, -S2)
    with pytest.raises(ValueError, match='latent dims differ'):
        w2_diag_gaussian(L1, S1, L2[:, :3], S2[:, :3])
