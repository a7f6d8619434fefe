"""Seed 003 (mmvae_nb.triplet, mmvae_nb.papers.triplet): the label branch and the 7-combination loss against hand-computed
cases, missing modalities, the linear networks, the Table-1 evaluator, Figure 3's index rule, the data split, and the
registry (experiments in mmvae_nb.papers are found and packaged). Real-data checks run when MMVAE_NB_DATA is set."""
import copy, json, math, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.models import meta_step
from mmvae_nb.multimodal import MultimodalDataset
from mmvae_nb.mvae import MVAE, subsets
from mmvae_nb.networks import build_modalities
from mmvae_nb.triplet import LabelledMVAE, labelled_subset_loss
from mmvae_nb.papers import triplet as paper

ROOT = Path(__file__).resolve().parents[1]
NAMES = ('farsi', 'kannada', 'speech')
SPECS = (ModalitySpec('farsi', (1, 2, 2), 'image', arch='linear'), ModalitySpec('kannada', (1, 3, 1), 'image', arch='linear'),
         ModalitySpec('speech', (2,), 'features', arch='linear'))
KW = dict(likelihood={'farsi': 'bernoulli', 'kannada': 'bernoulli', 'speech': 'normal'},
          likelihood_scale={'speech': math.sqrt(0.5)}, weight={'speech': 1 / 2})
SOFTPLUS_INV_1 = math.log(math.e - 1)


def make(D=3, zero=False, **kw):
    torch.manual_seed(0)
    m = LabelledMVAE(build_modalities(SPECS, D, **KW), D, **kw)
    if zero:
        with torch.no_grad():
            for p in m.parameters(): p.zero_()
            for mod in m.mods.values(): mod.encoder.raw_scale.bias.fill_(SOFTPLUS_INV_1)
    return m


def batch(B=4, mask=None, labels=(7, 0, 3, 9), seed=1):
    g = torch.Generator().manual_seed(seed)
    data = {'farsi': torch.rand(B, 1, 2, 2, generator=g), 'kannada': torch.rand(B, 1, 3, 1, generator=g),
            'speech': torch.randn(B, 2, generator=g)}
    return Batch(data, torch.ones(B, 3, dtype=torch.bool) if mask is None else mask, NAMES,
                 None if labels is None else torch.tensor(labels[:B]))


# ---------------------------------------------------------------- the objective as a pure function
def test_labelled_subset_loss_by_hand():
    log_px = torch.tensor([[[-1., -2.], [-3., -4.]]])
    ce = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    kl = torch.tensor([[0.5, 0.25], [1., 2.]])
    valid = torch.tensor([[True, True], [True, False]])
    assert torch.allclose(labelled_subset_loss(log_px, kl, ce, valid), torch.tensor([5.9, 2.45]))
    assert torch.allclose(labelled_subset_loss(log_px, kl, ce, valid, beta=0.5, ce_weight=2.), torch.tensor([5.55, 2.525]))
    nan = ce.where(valid, torch.tensor(float('nan')))
    assert torch.allclose(labelled_subset_loss(log_px, kl, nan, valid), torch.tensor([5.9, 2.45]))
    with pytest.raises(ValueError, match=r'\(K, S, B\)'): labelled_subset_loss(log_px, kl, ce[0], valid)
    with pytest.raises(ValueError, match='>= 0'): labelled_subset_loss(log_px, kl, ce, valid, ce_weight=-1.)


def test_seven_combination_loss_zero_model_closed_form():
    """Every expert N(0, 1), zero decoders and classifier: subset S of s experts has q = N(0, 1/(1+s)) in each of D dims,
    pixels cost ln 2, speech costs mean(x^2) + ln(pi)/2 (variance 1/2, weight 1/n), the label ln 10."""
    D, b = 3, batch()
    m = make(D, zero=True)
    loss, terms = m.loss(b)
    want = torch.zeros(4)
    for S in [('farsi', 'kannada', 'speech'), ('farsi', 'kannada'), ('farsi', 'speech'), ('kannada', 'speech'),
              ('farsi',), ('kannada',), ('speech',)]:
        s = len(S)
        kl = D / 2 * (1 / (1 + s) - 1 + math.log(1 + s))
        rec = sum({'farsi': 4 * math.log(2), 'kannada': 3 * math.log(2)}.get(n, 0.) for n in S)
        if 'speech' in S: rec = rec + b.data['speech'].square().mean(1) + 0.5 * math.log(math.pi)
        want += rec + math.log(10) + kl
    assert abs(loss.item() - want.mean().item()) < 1e-5
    assert terms['n_terms'].item() == 7 and abs(terms['ce'].item() - math.log(10)) < 1e-6
    # 0.0 * CE: exactly the ln 10 per subset less
    m.ce_weight = 0.
    assert abs(m.loss(b)[0].item() - (want.mean().item() - 7 * math.log(10))) < 1e-5


def test_classifier_branch_by_hand():
    """Zero encoder weights, location bias m, scale 1: given s experts the posterior mean is s m / (1 + s);
    the branch's logits are W mean + b, and the loss's CE part is the cross-entropy at each subset's draw."""
    D = 2
    m = make(D, zero=True)
    with torch.no_grad():
        for mod in m.mods.values(): mod.encoder.loc.bias.copy_(torch.tensor([1., -2.]))
        W = torch.tensor([[1., 0.], [0., 1.], [1., 1.], [-1., 0.], [0., -1.], [2., 0.], [0., 2.], [1., -1.], [-1., 1.], [0., 0.]])
        m.classifier.weight.copy_(W); m.classifier.bias.copy_(torch.arange(10) * 0.1)
    b = batch()
    for given, s in ((['speech'], 1), (['farsi', 'kannada'], 2), (list(NAMES), 3)):
        mean = torch.tensor([1., -2.]) * s / (1 + s)
        logits = torch.tensor([[w[0] * mean[0] + w[1] * mean[1] + 0.1 * c for c, w in enumerate(W.tolist())]] * 4)
        assert torch.allclose(m.classify(b, given), logits, atol=1e-6)
    subs = subsets(NAMES, 'all')
    torch.manual_seed(4); with_ce = m.loss(b)[0]
    m.ce_weight = 0.
    torch.manual_seed(4); without = m.loss(b)[0]
    torch.manual_seed(4); eps = torch.randn(1, 7, 4, D)
    ce = torch.zeros(4)
    for j, S in enumerate(subs):
        s = len(S)
        z = torch.tensor([1., -2.]) * s / (1 + s) + eps[0, j] / math.sqrt(1 + s)
        lg = z @ W.T + torch.arange(10) * 0.1
        ce += torch.logsumexp(lg, -1) - lg[torch.arange(4), b.labels]
    assert abs((with_ce - without).item() - ce.mean().item()) < 1e-5


def test_loss_is_the_sum_of_subset_elbos_one_at_a_time():
    m, b = make(), batch()
    subs = subsets(m.names, 'all')
    torch.manual_seed(5); loss, _ = m.loss(b)
    torch.manual_seed(5); eps = torch.randn(1, len(subs), 4, 3)
    total = torch.zeros(4)
    for i, S in enumerate(subs):
        q = m.joint_posterior(m.restrict(b, S))
        z = q.mean + q.stddev * eps[0, i]
        lpx = sum(m.mods[n].weight * m.mods[n].likelihood(z).log_prob(b.data[n]) for n in S)
        lg = m.classifier(z)
        total += lpx - (torch.logsumexp(lg, -1) - lg[torch.arange(4), b.labels]) - kl_divergence(q, m.prior())
    assert torch.allclose(loss, -total.mean(), atol=1e-4)
    plain = MVAE(copy.deepcopy(list(m.mods.values())), 3, subset_mode='all')
    m.ce_weight = 0.
    torch.manual_seed(5); l0 = m.loss(b)[0]
    torch.manual_seed(5); l1 = plain.loss(b)[0]
    assert torch.allclose(l0, l1, atol=1e-5)
    assert meta_step(copy.deepcopy(m), b) == ()


def test_missing_modalities_never_leak():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]]).bool()
    b = batch(mask=mask)
    b.data['kannada'][1] = float('nan'); b.data['speech'][1] = float('nan'); b.data['farsi'][2] = float('nan')
    m = make()
    torch.manual_seed(3); loss, terms = m.loss(b)
    assert abs(terms['n_terms'].item() - (7 + 1 + 3 + 3) / 4) < 1e-6 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    enc_grad = m.mods['kannada'].encoder.loc.weight.grad.clone()
    b2 = batch(mask=mask); b2.data['kannada'][1] = 123.                      # another hidden value: same gradient
    m.zero_grad(); torch.manual_seed(3); m.loss(b2)[0].backward()
    assert torch.allclose(enc_grad, m.mods['kannada'].encoder.loc.weight.grad)


def test_bad_labels_are_refused():
    m = make()
    with pytest.raises(ValueError, match='class label'): m.loss(batch(labels=None))
    with pytest.raises(ValueError, match=r'0\.\.9'): m.loss(batch(labels=(1, 2, 3, 10)))
    with pytest.raises(ValueError, match='n_classes'): LabelledMVAE(build_modalities(SPECS, 3, **KW), 3, n_classes=1)


def test_linear_networks():
    mods = build_modalities(SPECS, 5, **KW)
    enc = mods[0].encoder
    x1, x2 = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    assert torch.allclose(enc(0.3 * x1 + 0.7 * x2)[0], 0.3 * enc(x1)[0] + 0.7 * enc(x2)[0], atol=1e-6)
    assert sum(p.numel() for p in mods[0].parameters()) == 2 * (4 * 5 + 5) + (5 * 4 + 4)
    assert mods[2].decoder(torch.zeros(6, 5)).shape == (6, 2)
    with pytest.raises(ValueError, match='no hidden layers'): build_modalities(SPECS[:1], 5, likelihood='bernoulli', hidden=8)


# ---------------------------------------------------------------- Table 1, Figure 3, the split
def test_table1_rows_zero_model_closed_forms():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 10
    ds = MultimodalDataset({s.name: torch.rand(30, *s.shape, generator=g) for s in SPECS}, SPECS, y)
    rows = paper.table1_rows(make(zero=True), {'train': ds, 'test': ds.subset(torch.arange(10))}, SimpleNamespace(eval_batch_size=7))
    assert len(rows) == 2 * 7 * 6
    got = {(r['protocol'], r['given'], r['metric']): r['value'] for r in rows}
    for S in paper.TABLE1_SUBSETS:
        k, s = ('training data', '+'.join(S)), len(S)
        assert abs(got[k + ('kl',)] - 1.5 * (1 / (1 + s) - 1 + math.log(1 + s))) < 1e-5
        assert abs(got[k + ('bce_farsi',)] - 4 * math.log(2)) < 1e-5 and abs(got[k + ('bce_kannada',)] - 3 * math.log(2)) < 1e-5
        assert abs(got[k + ('mse_speech',)] - ds.data['speech'].square().mean().item()) < 1e-5
        assert abs(got[k + ('neg_elbo',)] - sum(got[k + (c,)] for c in ('bce_farsi', 'bce_kannada', 'mse_speech', 'kl'))) < 1e-4
        assert got[k + ('label_accuracy',)] == pytest.approx(0.1)
    md = paper.table1_markdown(rows)
    assert '| farsi + kannada + speech | 99.95 / 10.00 / 10.00 |' in md and '348.67' in md


def test_poster_numbers_are_keyed_to_the_training_rows():
    pr = paper.seed003_paper_numbers()
    assert len(pr) == 35
    assert pr['label_accuracy', 'speech', 'label', 'training data'][0] == pytest.approx(0.992)
    assert pr['neg_elbo', 'farsi+kannada', 'farsi+kannada+speech', 'training data'][0] == 187.64
    assert pr['mse_speech', 'kannada+speech', 'speech', 'training data'][0] == 0.011
    # the poster's ELBO column is its three reconstruction columns plus a positive remainder (the KL)
    for S, (acc, elbo, b1, b2, mse) in paper.POSTER_TABLE1.items(): assert 0 < elbo - (b1 + b2 + mse) < 30


def test_label_informative_dim_rule():
    g = torch.Generator().manual_seed(1)
    lab = torch.arange(200) % 10
    z = torch.randn(200, 6, generator=g)
    z[:, 4] = lab.float() + 0.1 * torch.randn(200, generator=g)
    z[:, 2] = 1e-3 * lab.float()                                   # all class, but inactive
    i, eta2 = paper.label_informative_dim(z, lab)
    assert i == 4 and eta2[2] > eta2[4] > 0.9
    with pytest.raises(ValueError, match='collapsed'): paper.label_informative_dim(z * 1e-3, lab)


def test_split_per_class():
    labels = torch.arange(1013) % 10
    tr, te = paper.split_per_class(labels, 0.2)
    assert len(tr) + len(te) == 1013 and not set(tr.tolist()) & set(te.tolist())
    assert (labels[te].bincount() == torch.tensor([round(0.2 * int(c)) for c in labels.bincount()])).all()
    assert all(torch.equal(a, b) for a, b in zip(paper.split_per_class(labels, 0.2), (tr, te)))   # fixed


# ---------------------------------------------------------------- registry and packaging
def test_registry_finds_the_papers_experiments_whatever_is_imported_first():
    for first in ('mmvae_nb.cli', 'mmvae_nb.papers.triplet'):              # the registry first, and the other way round
        code = (f"import {first}\nfrom mmvae_nb.experiments import EXPERIMENTS\n"
                "assert 'seed003_triplet' in EXPERIMENTS and 'mvae_triplet' not in EXPERIMENTS, sorted(EXPERIMENTS)")
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert r.returncode == 0, (first, r.stderr[-2000:])
    from mmvae_nb.cli import main
    from mmvae_nb.experiments import EXPERIMENTS, validate_config
    exp = EXPERIMENTS['seed003_triplet']
    for scale in ('paper', 'cpu'): validate_config(exp.config(scale), exp)
    p = exp.config('paper')
    assert (p.latent_dim, p.batch_size, p.lr, p.epochs, p.model_kwargs['subset_mode']) == (256, 100, 1e-3, 100, 'all')


def test_papers_subpackage_is_packaged():
    import setuptools
    pkgs = setuptools.find_packages(where=str(ROOT), include=['mmvae_nb', 'mmvae_nb.*'])
    assert 'mmvae_nb.papers' in pkgs and 'tests' not in pkgs
    assert (ROOT / 'mmvae_nb' / 'papers' / '__init__.py').read_text().count('pkgutil.iter_modules') == 1


# ---------------------------------------------------------------- real data
REAL = os.environ.get('MMVAE_NB_DATA')


def _have_real():
    from mmvae_nb import data
    return REAL and all(data.available(n, REAL, s) for n, s in (('hoda', 'train'), ('hoda', 'test'), ('kannada', 'dig'),
                                                                 ('kannada', 'test'), ('fsdd', 'train')))


@pytest.mark.realdata
def test_seed003_triplets_real():
    if not _have_real(): pytest.skip('MMVAE_NB_DATA does not hold Hoda, Kannada-MNIST (dig, test) and FSDD')
    from mmvae_nb import data
    tr, te = paper.seed003_triplets('train', root=REAL), paper.seed003_triplets('test', root=REAL)
    assert (len(tr), len(te)) == (16190, 4050) and tr.labels.bincount().tolist() == [1619] * 10
    assert tr.rows['kannada'].unique().numel() == len(tr) and tr.rows['farsi'].unique().numel() == len(tr)
    assert 2600 < tr.rows['speech'].unique().numel() <= 2700 and tr.rows['speech'].bincount().max() > 1   # with replacement
    xk, yk = paper.kannada_pool('train', REAL)
    assert torch.equal(yk[tr.rows['kannada']], tr.labels)
    assert torch.equal(data.load_hoda('test', root=REAL).labels[te.rows['farsi']], te.labels)
    sp, _ = paper.speech_features('train', REAL)
    assert torch.allclose(sp.amin(0), torch.zeros(13)) and torch.allclose(sp.amax(0), torch.ones(13))


@pytest.mark.realdata
@pytest.mark.slow
def test_reproduce_cpu_scale_end_to_end(tmp_path):
    if not _have_real(): pytest.skip('MMVAE_NB_DATA does not hold the seed-003 data')
    from mmvae_nb.experiments import reproduce
    out = reproduce('seed003_triplet', 'cpu', device='cpu', data_root=REAL, out_dir=tmp_path / 'run', overrides={'progress': False})
    rows = json.loads((out / 'results.json').read_text())
    assert sum(r['metric'] == 'label_accuracy' for r in rows) == 14
    md = (out / 'results.md').read_text()
    assert '| label_accuracy | speech | label | training data | 0.992 |' in md and '**Scale: cpu**' in (out / 'report.md').read_text()
    facts = paper.write_extras(out, data_root=REAL)
    assert (out / 'figure3.png').stat().st_size > 0 and (out / 'table1.md').exists() and 0 <= facts['index'] < 256
