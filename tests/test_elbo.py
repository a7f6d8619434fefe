"Independent checks of mmvae_nb.elbo: bounds, DReG, the linear-Gaussian testbed and the digits VAE."
import math
import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Normal, Laplace, Independent, MultivariateNormal, Gamma

import mmvae_nb.elbo as E   # module import: `E.test_elbo` must not be collected as a test

torch.set_num_threads(1)
f64 = torch.float64


def _toy(seed=1, d=3, D=5, sigma=0.5):
    g = torch.Generator().manual_seed(seed)
    model = E.LinearGaussian(torch.randn(D, d, generator=g, dtype=f64), torch.randn(D, generator=g, dtype=f64), sigma)
    x = model.likelihood(torch.randn(2, d, generator=g, dtype=f64)).sample()   # B=2 data points
    return model, x


# ---- pure functions -------------------------------------------------------------------------------------------

def test_elbo_forms_and_shapes():
    a, b, c = torch.randn(3, 6, 2, 3).unbind(0)
    torch.testing.assert_close(E.elbo(a, b, c), (a + b - c).mean(0))
    torch.testing.assert_close(E.elbo_kl(a, c[0]), a.mean(0) - c[0])
    assert E.elbo(a, b, c).shape == (2, 3)
    with pytest.raises(ValueError, match='log_pz has shape'): E.elbo(a, b[:, :1], c)
    with pytest.raises(ValueError, match='K=0'): E.elbo(a[:0], b[:0], c[:0])
    with pytest.raises(ValueError, match='kl has shape'): E.elbo_kl(a, c)
    with pytest.raises(ValueError, match='scalar'): E.iwae_bound(torch.tensor(1.))
    with pytest.raises(ValueError, match='K=0'): E.iwae_bound(torch.empty(3, 0), dim=1)
    m = torch.empty(4, 7, device='meta')
    assert E.iwae_bound(m).shape == (7,) and E.elbo(m, m, m).shape == (7,)


def test_iwae_bound_values():
    lw = torch.randn(9, 4, dtype=f64) * 3
    torch.testing.assert_close(E.iwae_bound(lw), torch.log(torch.exp(lw).mean(0)))
    torch.testing.assert_close(E.iwae_bound(lw.T, dim=1), torch.log(torch.exp(lw).mean(0)))
    torch.testing.assert_close(E.iwae_bound(lw[:1]), lw[0])                      # IWAE_1 = ELBO
    assert torch.isfinite(E.iwae_bound(torch.full((5, 2), -3e4))).all()           # no underflow in float32
    assert (E.iwae_bound(lw) >= lw.mean(0)).all()                                 # Jensen


def test_elbo_matches_closed_form_kl():
    # p(z)=N(0,1), p(x|z)=N(z,1): exact ELBO = log N(x;0,2) - KL(q || N(x/2, 1/2))
    torch.manual_seed(0)
    x, q, K = torch.tensor([-0.7], dtype=f64), Normal(torch.tensor([0.2], dtype=f64), torch.tensor([0.5], dtype=f64)), 100_000
    exact = Normal(0., math.sqrt(2.)).log_prob(x) - torch.distributions.kl_divergence(q, Normal(x / 2, math.sqrt(.5)))
    z = q.sample((K,))
    lpxz = Normal(z, 1.).log_prob(x)
    jensen = E.elbo(lpxz, Normal(0., 1.).log_prob(z), q.log_prob(z))
    kl_form = E.elbo_kl(lpxz, torch.distributions.kl_divergence(q, Normal(torch.zeros(1, dtype=f64), 1.)))
    assert abs(jensen - exact).item() < 0.02 and abs(kl_form - exact).item() < 0.02


# ---- DReG -----------------------------------------------------------------------------------------------------

def test_detach_dist():
    loc, scale = torch.randn(3, requires_grad=True), torch.rand(3, requires_grad=True)
    for d in (Normal(loc, scale + 0.1), Laplace(loc, scale + 0.1), Independent(Normal(loc, scale + 0.1), 1),
              MultivariateNormal(loc, scale_tril=torch.diag(scale + 0.1))):
        dd = E.detach_dist(d)
        assert type(dd) is type(d)
        z = d.sample()
        torch.testing.assert_close(dd.log_prob(z), d.log_prob(z).detach())
        assert not dd.log_prob(z).requires_grad
    assert type(E.detach_dist(Independent(Laplace(loc, 1.), 1)).base_dist) is Laplace
    with pytest.raises(ValueError, match='Gamma'): E.detach_dist(Gamma(1., 1.))


def test_dreg_hook_gives_squared_weights_on_scale_path():
    # z = m + s * eps; the encoder gradient must be sum_k w~_k^2 dlw/dz_k dz_k/dparam.
    torch.manual_seed(2)
    m, s = torch.tensor([0.3, -0.2], requires_grad=True), torch.tensor([0.8, 1.4], requires_grad=True)
    c = torch.tensor([1.0, -0.5], requires_grad=True)                              # "decoder" parameter
    eps = torch.randn(7, 2)
    z = m + s * eps
    q = Independent(Normal(m, s), 1)
    lw = -((z - c) ** 2).sum(-1) - E.detach_dist(q).log_prob(z)
    gm, gs, gc = torch.autograd.grad(E.dreg_surrogate(lw, z), (m, s, c))
    # reference by hand: partial dlw/dz with everything else fixed
    zz = z.detach().requires_grad_()
    lw_ref = -((zz - c.detach()) ** 2).sum(-1) - Independent(Normal(m.detach(), s.detach()), 1).log_prob(zz)
    dz, = torch.autograd.grad(lw_ref.sum(), zz)
    w = torch.softmax(lw.detach(), 0)[:, None]
    torch.testing.assert_close(gm, (w ** 2 * dz).sum(0))
    torch.testing.assert_close(gs, (w ** 2 * dz * eps).sum(0))
    torch.testing.assert_close(gc, (w * 2 * (z.detach() - c.detach())).sum(0))
    with pytest.raises(ValueError, match='shape mismatch'): E.dreg_surrogate(lw, z[:, :1].T)
    with torch.no_grad():                                                          # evaluation: no hook, just the value
        torch.testing.assert_close(E.dreg_surrogate(lw.detach(), z.detach()), (w[:, 0] * lw.detach()).sum())


# ---- linear-Gaussian testbed ---------------------------------------------------------------------------------

def test_linear_gaussian_against_quadrature():
    W, b, sigma = torch.tensor([[1.7]], dtype=f64), torch.tensor([0.4], dtype=f64), 0.6
    model, x = E.LinearGaussian(W, b, sigma), torch.tensor([[1.3]], dtype=f64)
    joint = lambda z: stats.norm.pdf(1.3, 1.7 * z + 0.4, 0.6) * stats.norm.pdf(z)
    px, _ = integrate.quad(joint, -12, 12)
    mean, _ = integrate.quad(lambda z: z * joint(z) / px, -12, 12)
    var, _ = integrate.quad(lambda z: (z - mean) ** 2 * joint(z) / px, -12, 12)
    assert abs(model.log_marginal(x).item() - math.log(px)) < 1e-8
    post = model.true_posterior(x)
    assert abs(post.mean.item() - mean) < 1e-8 and abs(post.variance.item() - var) < 1e-8


def test_bayes_rule_and_zero_variance_at_true_posterior():
    model, x = _toy()
    post = model.true_posterior(x)
    with torch.no_grad():
        z = post.sample((500,))                                                    # (K, B, d)
        lw = model.log_joint(x, z) - post.log_prob(z)
    torch.testing.assert_close(lw, model.log_marginal(x).detach().expand_as(lw), rtol=0, atol=1e-9)
    torch.testing.assert_close(E.elbo(model.likelihood(z).log_prob(x), model.prior().log_prob(z), post.log_prob(z)),
                               model.log_marginal(x), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match='scale must be positive'): E.DiagGaussianProposal(torch.zeros(2), torch.tensor([1., 0.]))


def test_iwae_rises_with_k_and_mean_log_weight_does_not():
    torch.manual_seed(0)
    model, x = _toy()
    q = E.DiagGaussianProposal.from_posterior(model.true_posterior(x), shift=0.4, scale_factor=1.4)()
    t = E.iwae_vs_k(model, x, q, Ks=(1, 10, 200), n_reps=300)
    log_px = model.log_marginal(x).detach()                                         # (B,) = (2,)
    iw = torch.stack([t[k]['iwae'] for k in (1, 10, 200)])                           # (3 K's, B)
    wrong = torch.stack([t[k]['mean_log_w'] for k in (1, 10, 200)])
    se1 = t[1]['mean_log_w_se']
    assert (iw[1:] > iw[:-1]).all() and ((iw[-1] - log_px).abs() < 0.05).all() and ((log_px - iw[0]) > 0.5).all()
    assert ((wrong - wrong[0]).abs() < 4 * se1 * math.sqrt(2)).all() and ((log_px - wrong) > 0.5).all()


def test_dreg_unbiased_wrong_variants_biased_and_snr():
    torch.manual_seed(0)
    model, x = _toy()
    prop = E.DiagGaussianProposal.from_posterior(model.true_posterior(x), shift=0.5, scale_factor=1.3)
    R = 8000
    g = {e: E.proposal_grad_samples(model, x, prop, K=8, n_reps=R, estimator=e).reshape(R, -1) for e in E.GRAD_ESTIMATORS}
    assert g['dreg'].shape == (R, 2 * 2 * 3)
    z = lambda a, b: ((a.mean(0) - b.mean(0)) / (a.var(0) / R + b.var(0) / R).sqrt()).abs()
    assert z(g['dreg'], g['iwae']).max() < 4.5
    assert z(g['dreg_no_detach'], g['iwae']).max() > 8 and z(g['dreg_no_hook'], g['iwae']).max() > 8
    snr = {e: (lambda s: s.mean(0).abs() / s.std(0))(E.proposal_grad_samples(model, x, prop, K=100, n_reps=1000, estimator=e).reshape(1000, -1))
           for e in ('iwae', 'dreg')}
    assert snr['dreg'].median() > 10 * snr['iwae'].median()
    with pytest.raises(ValueError, match='unknown estimator'): E.proposal_grad_samples(model, x, prop, 2, 2, 'reinforce')


# ---- digits VAE ----------------------------------------------------------------------------------------------

def test_load_digits_tensors():
    xtr, ytr, xte, yte = E.load_digits_tensors(seed=3, test_fraction=0.25)
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797 and abs(len(xte) - 0.25 * 1797) < 2
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    assert 0 <= xtr.min() and xtr.max() == 1 and set(yte.tolist()) == set(range(10))
    torch.testing.assert_close(E.load_digits_tensors(seed=3, test_fraction=0.25)[0], xtr)
    assert not torch.equal(E.load_digits_tensors(seed=4, test_fraction=0.25)[0], xtr)
    with pytest.raises(ValueError, match='test_fraction'): E.load_digits_tensors(test_fraction=0)


def test_digits_vae_objectives():
    torch.manual_seed(0)
    vae, x = E.DigitsVAE(latent_dim=3, hidden=16), E.load_digits_tensors()[0][:6]
    for obj in E.VAE_OBJECTIVES: assert vae.loss(x, K=4, objective=obj).shape == (6,)
    assert vae.sample(3).shape == (3, 1, 8, 8) and vae.reconstruct(x).shape == x.shape
    assert 0 <= vae.sample(50).min() and vae.sample(50).max() <= 1
    def run(obj):
        torch.manual_seed(1); vae.zero_grad()
        l = vae.loss(x, K=6, objective=obj); l.sum().backward()
        return l.detach(), [p.grad.clone() for p in vae.decoder.parameters()], [p.grad.clone() for p in vae.encoder.parameters()]
    (l1, dec1, enc1), (l2, dec2, enc2) = run('iwae'), run('dreg')
    torch.testing.assert_close(l1, l2)                                              # dreg reports the IWAE value
    for a, b in zip(dec1, dec2): torch.testing.assert_close(a, b)                   # same decoder gradient
    assert any(not torch.allclose(a, b) for a, b in zip(enc1, enc2))                # different encoder gradient
    with pytest.raises(ValueError, match='unknown objective'): vae.loss(x, objective='nope')
    with pytest.raises(ValueError, match='K must be positive'): vae.loss(x, K=0)


def test_training_improves_and_demo_writes_figure(tmp_path):
    xtr, _, xte, _ = E.load_digits_tensors()
    torch.manual_seed(0)
    vae = E.DigitsVAE(latent_dim=4, hidden=64)
    before = E.test_elbo(vae, xte)
    losses = E.train_vae(vae, xtr[:600], epochs=6, batch_size=64, lr=2e-3, seed=0, progress=False, K=2, objective='dreg')
    assert len(losses) == 6 and losses[-1] < losses[0] - 10
    assert E.test_elbo(vae, xte) > before + 10 and vae.training
    res = E.digits_vae_demo(out_dir=tmp_path / 'demo', epochs=3, K=5, progress=False)
    png = tmp_path / 'demo' / 'samples_reconstructions.png'
    assert res['figure'] == png and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert [p.name for p in png.parent.iterdir()] == [png.name]                    # no temporary file left behind
    assert res['test_elbo'] > res['untrained_test_elbo'] and len(res['train_losses']) == 3
