"Independent checks of the metrics modules (classifiers, coherence, likelihoods, relatedness, evaluation): known-answer fake models, the linear-Gaussian likelihood, chunking, CCA, caching, tables."
import csv
import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.elbo import LinearGaussian
from mmvae_nb.relatedness import CCA, class_distance_matrix, gaussian_analogue, relatedness
from mmvae_nb.classifiers import Classifier, load_or_train_classifier, state_dict_sha256, train_classifier
from mmvae_nb.likelihoods import LinearGaussianMVAE, conditional_log_likelihood, iwae_log_likelihood, streaming_log_sum_exp
from mmvae_nb.coherence import cross_coherence, cross_coherence_matrix, joint_coherence, latent_accuracy
from mmvae_nb.evaluation import evaluate_model, paper_numbers, write_table
from mmvae_nb.models import Modality, MultimodalVAE, UniformMixture
from mmvae_nb.multimodal import MultimodalDataset

C = 10
SPECS = (ModalitySpec('a', (1, 4, 4), 'image'), ModalitySpec('b', (3, 4, 4), 'image'))


# --- a fake model family: the class is the brightness of the image ----------------------------------------------------

def brightness_data(n, seed):
    "Images of class c are filled with (c + 0.5) / 10 plus noise 0.01."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    data = {s.name: ((y.float() + .5) / C).view(-1, 1, 1, 1).expand(n, *s.shape) + 0.01 * torch.randn(n, *s.shape, generator=g)
            for s in SPECS}
    return MultimodalDataset(data, SPECS, y, name=f'brightness-{seed}')


class BrightEnc(nn.Module):
    def __init__(self, random=False): super().__init__(); self.random = random
    def forward(self, x):
        c = torch.randint(0, C, (len(x),)) if self.random else (x.mean((1, 2, 3)) * C).floor().long().clamp(0, C - 1)
        loc = 5. * nn.functional.one_hot(c, C).float()
        return loc, torch.full_like(loc, -15.)


class BrightDec(nn.Module):
    def __init__(self, shape, random=False): super().__init__(); self.shape, self.random = shape, random
    def forward(self, z):
        c = torch.randint(0, C, z.shape[:1]) if self.random else z.argmax(-1)
        return ((c.float() + .5) / C).view(-1, 1, 1, 1).expand(len(z), *self.shape).clone()


class FakeMoE(MultimodalVAE):
    def __init__(self, random=False):
        super().__init__([Modality(s, BrightEnc(random), BrightDec(s.shape, random)) for s in SPECS], latent_dim=C)

    def joint_posterior(self, batch):
        qs = self.unimodal_posteriors(batch)
        return UniformMixture(list(qs.values()), torch.stack([batch.observed(n) for n in qs], -1))


class BrightnessNet(nn.Module):
    def forward(self, x): return -(x.mean((1, 2, 3))[:, None] - (torch.arange(C) + .5) / C).abs()


ORACLE = {s.name: Classifier(BrightnessNet(), s, {'accuracy': 1.0}) for s in SPECS}


@pytest.fixture(scope='module')
def data():
    return brightness_data(400, 0), brightness_data(2000, 1)


def test_coherence_is_one_for_a_class_preserving_model_and_chance_for_a_random_one(data):
    train, test = data
    perfect, rnd = FakeMoE(), FakeMoE(random=True)
    r = cross_coherence(perfect, test, ORACLE, 'a', 'b')
    assert r['value'] == 1.0 and r['n'] == 2000 and r['classifier_accuracy'] == 1.0
    assert joint_coherence(perfect, ORACLE, n=1000)['value'] == 1.0
    se = math.sqrt(.09 / 2000)
    for row in cross_coherence_matrix(rnd, test, ORACLE) + [joint_coherence(rnd, ORACLE, n=2000)]:
        assert abs(row['value'] - 0.1) < 4 * se, row
    assert all(row['value'] == 1.0 for row in cross_coherence_matrix(perfect, test, ORACLE))


def test_coherence_skips_items_missing_the_source(data):
    _, test = data
    mask = torch.ones(len(test), 2, dtype=torch.bool); mask[::4, 0] = False
    r = cross_coherence(FakeMoE(), test.replace(mask=mask), ORACLE, 'a', 'b')
    assert r['n'] == len(test) - len(test) // 4 and r['value'] == 1.0


def test_latent_accuracy_protocols_are_labelled_and_correct(data):
    train, test = data
    for proto, kw in (('mmvae', {'epochs': 30, 'batch_size': 32}), ('mopoe', {})):
        rows = latent_accuracy(FakeMoE(), train, test, proto, **kw)
        assert {r['value'] for r in rows} == {1.0}
        assert all(r['protocol'].startswith(proto) for r in rows)
        for r in latent_accuracy(FakeMoE(random=True), train, test, proto, **kw):
            assert abs(r['value'] - 0.1) < 0.05
    assert len(latent_accuracy(FakeMoE(), train, test, 'mopoe')) == 3          # a, b, a+b


def test_class_identical_posteriors_give_zero_diagonal(data):
    _, test = data
    res = relatedness(FakeMoE(), test, 'a', 'b', batch_size=200, n_batches=5)
    K = res['K']
    assert K.shape == (C, C)
    np.testing.assert_array_equal(np.diag(K), np.zeros(C))
    assert (K[~np.eye(C, dtype=bool)] > 1).all()
    assert res['auc'] == 1.0
    d, ys, yt = torch.rand(5, 6), torch.tensor([0, 1, 0, 2, 2]), torch.tensor([1, 1, 0, 2, 0, 2])
    K2 = class_distance_matrix(d, ys, yt, 3)
    assert torch.isclose(K2[0, 1], d[[0, 2]][:, [0, 1]].mean())


def test_gaussian_analogue_of_laplace_matches_its_variance():
    from torch.distributions import Independent, Laplace
    b = torch.rand(4, 3) + .1
    loc, scale = gaussian_analogue(Independent(Laplace(torch.zeros(4, 3), b), 1))
    x = Laplace(torch.zeros(200_000), torch.tensor(0.7)).sample()
    assert torch.allclose(scale, b * math.sqrt(2))
    assert abs(x.std().item() - 0.7 * math.sqrt(2)) < 0.01


# --- likelihoods ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def linear_gaussian():
    g = torch.Generator().manual_seed(11)
    d, sizes, sigma = 2, (3, 2), 0.5
    W = torch.randn(5, d, generator=g, dtype=torch.float64); b = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.randn(8, d, generator=g, dtype=torch.float64) @ W.T + b + sigma * torch.randn(8, 5, generator=g, dtype=torch.float64)
    batch = Batch({'s': x[:, :3], 't': x[:, 3:]}, torch.ones(8, 2, dtype=torch.bool), ('s', 't'))
    return W, b, sigma, sizes, x, batch


def test_iwae_matches_the_analytic_marginal(linear_gaussian):
    W, b, sigma, sizes, x, batch = linear_gaussian
    cov = W @ W.T + sigma**2 * torch.eye(5, dtype=torch.float64)
    exact = torch.as_tensor(scipy.stats.multivariate_normal(b.numpy(), cov.numpy()).logpdf(x.numpy()))
    assert torch.allclose(LinearGaussian(W, b, sigma).log_marginal(x).detach(), exact)
    model = LinearGaussianMVAE(W, b, sigma, sizes, ['s', 't'], inflate=1.3)
    iw = iwae_log_likelihood(model, batch, K=1000, seed=5)
    elbo = torch.stack([iwae_log_likelihood(model, batch, K=1, seed=s) for s in range(200)]).mean(0)   # expected ELBO
    assert (iw - exact).abs().max() < 0.1
    assert ((exact - elbo) > 0.2).all()
    exact_post = LinearGaussianMVAE(W, b, sigma, sizes, ['s', 't'], posterior='exact')
    assert torch.allclose(iwae_log_likelihood(exact_post, batch, K=3, seed=0), exact, atol=1e-8)
    # a subset: p(x_s) alone, proposal given s only
    cov_s = cov[:3, :3]
    exact_s = torch.as_tensor(scipy.stats.multivariate_normal(b[:3].numpy(), cov_s.numpy()).logpdf(x[:, :3].numpy()))
    assert torch.allclose(iwae_log_likelihood(exact_post, model.restrict(batch, ['s']), K=2, seed=0), exact_s, atol=1e-8)


def test_conditional_matches_the_gaussian_conditional(linear_gaussian):
    W, b, sigma, sizes, x, batch = linear_gaussian
    cov = (W @ W.T + sigma**2 * torch.eye(5, dtype=torch.float64)).numpy()
    S, T = slice(0, 3), slice(3, 5)
    gain = cov[T, S] @ np.linalg.inv(cov[S, S])
    exact = np.array([scipy.stats.multivariate_normal(b[T].numpy() + gain @ (xi[S] - b[S].numpy()),
                                                      cov[T, T] - gain @ cov[S, T]).logpdf(xi[T]) for xi in x.numpy()])
    model = LinearGaussianMVAE(W, b, sigma, sizes, ['s', 't'], inflate=1.5)   # wide proposal: light-tailed weights
    for proposal in ('given', 'joint'):
        est = conditional_log_likelihood(model, batch, 's', 't', K=20_000, proposal=proposal, seed=2).numpy()
        assert np.abs(est - exact).mean() < 0.06, proposal


class _Replay(torch.distributions.Distribution):
    arg_constraints = {}
    def __init__(self, base, bank):
        self.base, self.bank, self.i = base, bank, 0
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)
    def sample(self, shape=torch.Size()):
        z = self.bank[self.i:self.i + shape[0]]; self.i += shape[0]; return z
    def log_prob(self, z): return self.base.log_prob(z)


def test_chunked_equals_unchunked_and_bounds_decoder_batch(linear_gaussian):
    W, b, sigma, sizes, x, batch = linear_gaussian
    model = LinearGaussianMVAE(W, b, sigma, sizes, ['s', 't'], inflate=1.3)
    for m in model.mods.values(): m.decode_chunk = 0   # one decoder call per metric chunk
    torch.manual_seed(0)
    bank = LinearGaussianMVAE.joint_posterior(model, batch).sample((1000,))
    model.joint_posterior = lambda bt: _Replay(LinearGaussianMVAE.joint_posterior(model, bt), bank)
    sizes_seen = []
    hook = model.mods['t'].decoder.register_forward_hook(lambda m, i, o: sizes_seen.append(i[0].shape[0]))
    one = iwae_log_likelihood(model, batch, K=1000, chunk=1000)
    assert max(sizes_seen) == 1000 * 8
    sizes_seen.clear()
    many = iwae_log_likelihood(model, batch, K=1000, chunk=37)
    assert max(sizes_seen) == 37 * 8
    hook.remove()
    assert torch.allclose(one, many, atol=1e-10)


def test_streaming_log_sum_exp():
    x = torch.randn(500, 4, dtype=torch.float64) * 30 - 5000
    assert torch.allclose(streaming_log_sum_exp(x.split(13)), torch.logsumexp(x, 0))


# --- CCA --------------------------------------------------------------------------------------------------------------

def test_cca_correlations_are_the_generalised_eigenvalues():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3000, 3)) * [2., 1., .5]
    x1 = s @ rng.normal(size=(3, 8)) + rng.normal(size=(3000, 8))
    x2 = s @ rng.normal(size=(3, 6)) + rng.normal(size=(3000, 6))
    cca = CCA(k=3, reg=0).fit(x1, x2)
    a, b = x1 - x1.mean(0), x2 - x2.mean(0)
    C11, C22, C12 = a.T @ a, b.T @ b, a.T @ b
    ev = np.sort(np.linalg.eigvals(np.linalg.solve(C11, C12) @ np.linalg.solve(C22, C12.T)).real)[::-1][:3]
    np.testing.assert_allclose(cca.correlations, np.sqrt(ev), rtol=1e-6)
    assert cca.score(x1[:500], x2[:500]) > 0.5
    assert abs(cca.score(x1[:500], rng.permutation(x2[:500]))) < 0.08


# --- classifiers, cache, tables ---------------------------------------------------------------------------------------

def test_classifier_training_cache_and_checksum(data, tmp_path):
    train, test = data
    clf = train_classifier(train, 'b', epochs=30, test=test, batch_size=32, lr=3e-3)
    assert clf.meta['arch'] == 'small_cnn' and clf.accuracy > 0.85 and clf.meta['accuracy_on'] == 'test'
    assert clf.meta['sha256'] == state_dict_sha256(clf.net.state_dict())
    c1 = load_or_train_classifier(train, 'a', test, epochs=1, cache=tmp_path)
    (path,) = list((tmp_path/'classifiers').glob('*.pt'))
    c2 = load_or_train_classifier(train, 'a', test, epochs=1, cache=tmp_path)
    assert c2.meta['sha256'] == c1.meta['sha256'] and 'cached' in c2.meta
    blob = torch.load(path, weights_only=True)
    blob['state_dict'][next(iter(blob['state_dict']))].mul_(2)
    torch.save(blob, path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        load_or_train_classifier(train, 'a', test, epochs=1, cache=tmp_path)
    assert any('checksum' in str(x.message) for x in w)


def test_write_table_puts_paper_beside_ours(tmp_path):
    rows = [{'metric': 'cross_coherence', 'given': 'mnist', 'target': 'svhn', 'value': 0.5, 'n': 10, 'protocol': 'p',
             'classifier_accuracy': 0.98},
            {'metric': 'latent_accuracy', 'given': 'svhn', 'target': 'label', 'value': 0.4, 'n': 10, 'protocol': 'mopoe_logreg'}]
    c, m = write_table(rows, tmp_path/'t', paper=paper_numbers('mvae'), scale='cpu')
    got = list(csv.DictReader(c.open()))
    assert got[0]['paper'] == '0.123' and got[0]['ours (scale=cpu)'] == '0.5' and got[1]['paper'] == ''
    md = m.read_text()
    assert 'ours (scale=cpu)' in md and '0.123' in md and 'MEME Table 3' in md


def test_evaluate_model_rows(data):
    train, test = data
    rows = evaluate_model(FakeMoE(), test, ORACLE, train=train, joint_n=200, latent=('mopoe',), extra={'scale': 'cpu'})
    assert {r['metric'] for r in rows} == {'cross_coherence', 'self_coherence', 'joint_coherence', 'latent_accuracy'}
    assert all(r['scale'] == 'cpu' and r['value'] == 1.0 for r in rows)


def test_write_table_states_the_gap_to_the_paper(tmp_path):
    rows = [{'metric': 'log_likelihood', 'given': 'mnist', 'target': 'mnist', 'value': -90.5, 'n': 10, 'protocol': 'iwae', 'stderr': 0.2},
            {'metric': 'other', 'given': '', 'target': '', 'value': 1.0, 'n': 10, 'protocol': 'p'}]
    _, m = write_table(rows, tmp_path/'t', paper={('log_likelihood', 'mnist', 'mnist'): (-86.86, 'a paper')}, scale='cpu')
    lines = m.read_text().splitlines()
    assert 'ours − paper' in lines[0] and 'stderr' in lines[0]
    assert '-3.640' in lines[2] and '0.200' in lines[2]          # −90.5 − (−86.86)
    assert lines[3].count('|') == lines[0].count('|')           # no paper value: an empty gap cell
