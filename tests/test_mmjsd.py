"Independent checks of mmvae_nb.mmjsd: weighted PoE vs quadrature, JS vs quadrature, JS properties, masks, training."
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from torch import nn
from torch.distributions import kl_divergence

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.models import Modality, meta_step
from mmvae_nb.mmjsd import MMJSD, weighted_product_of_experts, jensen_shannon, js_weights, normalise_alphas


from toy import (LinearEncoder as Enc, LinearDecoder as Dec, latent_problem, assert_loss_falls, nan_hidden,
                 assert_unobserved_gets_no_gradient, assert_loss_ignores_hidden)


SHAPES = {'a': (1, 3, 3), 'b': (2, 2, 2)}


def mods(D=2):
    return [Modality(ModalitySpec(n, s), Enc(math.prod(s), D), Dec(D, s)) for n, s in SHAPES.items()]


def make_batch(mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    return Batch({n: torch.rand(len(mask), *s, generator=g) for n, s in SHAPES.items()}, mask, tuple(SHAPES))


def geometric_mean_logpdf(mus, sds, ws):
    "Log of the normalised prod_k N(mu_k, sd_k)^w_k as a callable, via quadrature of the normaliser."
    log_un = lambda z: sum(w * scipy.stats.norm.logpdf(z, m, s) for m, s, w in zip(mus, sds, ws))
    log_Z = np.log(scipy.integrate.quad(lambda z: np.exp(log_un(z)), -30, 30, limit=200)[0])
    return lambda z: log_un(z) - log_Z


@pytest.mark.parametrize('ws', [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1], [0.05, 0.05, 0.9]])
def test_weighted_poe_moments_by_quadrature(ws):
    mus, sds = [1.2, -0.8, 0.0], [0.5, 2.0, 1.0]
    logf = geometric_mean_logpdf(mus, sds, ws)
    f = lambda z: np.exp(logf(z))
    mean = scipy.integrate.quad(lambda z: z * f(z), -30, 30, limit=200)[0]
    var = scipy.integrate.quad(lambda z: (z - mean)**2 * f(z), -30, 30, limit=200)[0]
    loc, scale = weighted_product_of_experts(torch.tensor(mus, dtype=torch.float64).view(3, 1),
                                             torch.tensor(sds, dtype=torch.float64).view(3, 1), torch.tensor(ws, dtype=torch.float64))
    assert abs(loc.item() - mean) < 1e-7 and abs(scale.item()**2 - var) < 1e-7


def test_js_by_quadrature():
    mus, sds, ws = [1.2, -0.8, 0.0], [0.5, 2.0, 1.0], [0.5, 0.3, 0.2]
    logf = geometric_mean_logpdf(mus, sds, ws)
    ref = sum(w * scipy.integrate.quad(lambda z: scipy.stats.norm.pdf(z, m, s) * (scipy.stats.norm.logpdf(z, m, s) - logf(z)),
                                       m - 12 * s, m + 12 * s, limit=200)[0] for m, s, w in zip(mus, sds, ws))
    js = jensen_shannon(torch.tensor(mus, dtype=torch.float64).view(3, 1, 1), torch.tensor(sds, dtype=torch.float64).view(3, 1, 1),
                        torch.tensor([ws], dtype=torch.float64))
    assert abs(js.item() - ref) < 1e-6


def test_js_nonnegative_and_zero_iff_all_prior():
    torch.manual_seed(0)
    E, B, D = 4, 100, 3
    w = torch.full((B, E), 1 / E)
    locs, scales = torch.randn(E, B, D), torch.rand(E, B, D) + 0.1
    locs[-1], scales[-1] = 0., 1.                                             # the prior
    assert (jensen_shannon(locs, scales, w) > 0).all()
    zero = jensen_shannon(torch.zeros(E, B, D), torch.ones(E, B, D), w)
    assert zero.abs().max() < 1e-6
    same = locs[:1].expand(E - 1, B, D)
    agree = jensen_shannon(torch.cat([same, torch.zeros(1, B, D)]), torch.cat([scales[:1].expand(E - 1, B, D), torch.ones(1, B, D)]), w)
    assert (agree > 0).all()


def test_js_weights_and_alphas():
    w = js_weights(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([[1, 1], [0, 1], [1, 0]]).bool())
    np.testing.assert_allclose(w.numpy(), [[0.2, 0.3, 0.5], [0, 0.375, 0.625], [2 / 7, 0, 5 / 7]], rtol=1e-6)
    np.testing.assert_allclose(normalise_alphas(None, ('a', 'b', 'c')).numpy(), 0.25)
    np.testing.assert_allclose(normalise_alphas({'a': 1, 'b': 3, 'prior': 4}, ('a', 'b')).numpy(), [0.125, 0.375, 0.5])
    with pytest.raises(ValueError, match='alphas must be positive'):
        normalise_alphas([1, -1, 1], ('a', 'b'))


def test_model_regulariser_matches_definition():
    torch.manual_seed(1)
    model = MMJSD(mods(), 2)
    batch = make_batch([[1, 1], [1, 0]])
    qs = model.unimodal_posteriors(batch)
    pf = model.dynamic_prior(batch)
    # item 0: 1/3 each; precision = mean of precisions
    prec = (1 / qs['a'].stddev[0]**2 + 1 / qs['b'].stddev[0]**2 + 1) / 3
    assert torch.allclose(pf.stddev[0], prec.rsqrt(), atol=1e-5)
    mean = (qs['a'].mean[0] / qs['a'].stddev[0]**2 + qs['b'].mean[0] / qs['b'].stddev[0]**2) / 3 / prec
    assert torch.allclose(pf.mean[0], mean, atol=1e-5)
    pz = model.prior().expand((2,))
    js = torch.stack([(kl_divergence(qs['a'], pf)[0] + kl_divergence(qs['b'], pf)[0] + kl_divergence(pz, pf)[0]) / 3,
                      (kl_divergence(qs['a'], pf)[1] + kl_divergence(pz, pf)[1]) / 2])
    _, terms = model.loss(batch)
    assert torch.allclose(terms['js'], js.mean(), atol=1e-5)


def test_never_leaks_and_gradients():
    torch.manual_seed(2)
    model = MMJSD(mods(), 2)
    mask = torch.tensor([[1, 0], [0, 1], [1, 1]]).bool()
    b1 = make_batch(mask)
    b2 = nan_hidden(b1)
    for joint in ('poe', 'moe', 'dynamic_prior'):
        model.joint = joint
        assert torch.allclose(model.joint_posterior(b1).mean, model.joint_posterior(b2).mean)
    assert_loss_ignores_hidden(model, b1)
    assert_unobserved_gets_no_gradient(model, b1, 'b')


@pytest.mark.parametrize('estimator', ['sample', 'stratified'])
def test_meta_step(estimator):
    assert meta_step(MMJSD(mods(), 2, estimator=estimator), make_batch([[1, 1], [1, 0], [0, 1]])) == ()


def test_training_loss_falls():
    torch.manual_seed(0)
    data, mask = latent_problem(SHAPES, N=256, D=2)                    # partially observed items
    assert_loss_falls(MMJSD(mods(2), 2, beta=1.0), data, mask)
