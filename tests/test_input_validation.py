"""Issue 10: bad inputs are rejected at the door by every model's `loss`, naming modality and row.
Before, NaN data gave `loss = nan` (MMVAE, MMVAE+) or "scale must be positive" (the other four), images in
[0, 255] trained silently, token ids >= the vocabulary raised "index out of range in self", an empty batch
crashed in a reshape and float64 input failed with a dtype mismatch."""
import math
import pytest, torch
from mmvae_nb.core import ModalitySpec, Batch
from mmvae_nb.models import quick_fit
from mmvae_nb.jmvae import JMVAE
from mmvae_nb.mvae import MVAE
from mmvae_nb.mmvae import MMVAE
from mmvae_nb.mopoe import MoPoE
from mmvae_nb.mmjsd import MMJSD
from mmvae_nb.mmvae_plus import MMVAEPlus

SPECS = (ModalitySpec('img', (1, 28, 28), 'image', arch='mnist_mlp'), ModalitySpec('label', (), 'categorical', n_classes=10))
BUILDERS = {'jmvae': lambda: JMVAE.from_specs(SPECS, latent_dim=4), 'mvae': lambda: MVAE.from_specs(SPECS, latent_dim=4),
            'mmvae': lambda: MMVAE.from_specs(SPECS, latent_dim=4, K=2), 'mopoe': lambda: MoPoE.from_specs(SPECS, latent_dim=4),
            'mmjsd': lambda: MMJSD.from_specs(SPECS, latent_dim=4),
            'mmvae_plus': lambda: MMVAEPlus.from_specs(SPECS, latent_dim_z=2, latent_dim_w=2, K=2)}


def good_batch(n=6):
    torch.manual_seed(0)
    return Batch({'img': torch.rand(n, 1, 28, 28), 'label': torch.randint(0, 10, (n,))},
                 torch.ones(n, 2, dtype=torch.bool), ('img', 'label'), index=torch.arange(100, 100 + n))


def with_data(b, **data): return Batch({**b.data, **data}, b.mask, b.names, b.labels, b.index)


@pytest.fixture(params=sorted(BUILDERS))
def model(request):
    torch.manual_seed(0)
    return BUILDERS[request.param]()


def test_good_batch_passes(model):
    loss, _ = model.loss(good_batch())
    assert torch.isfinite(loss)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_image_named_with_row(model, bad):
    b = good_batch(); x = b.data['img'].clone(); x[3, 0, 5, 5] = bad
    with pytest.raises(ValueError, match=r"modality 'img': NaN or Inf values in row 3 \(dataset row 103\)"):
        model.loss(with_data(b, img=x))


def test_hidden_nan_is_still_allowed(model):
    b = good_batch(); x = b.data['img'].clone(); x[3] = float('nan')
    mask = b.mask.clone(); mask[3, 0] = False
    loss, _ = model.loss(Batch({**b.data, 'img': x}, mask, b.names, index=b.index))
    assert torch.isfinite(loss)


def test_images_in_0_255_rejected(model):
    b = good_batch()
    with pytest.raises(ValueError, match=r"image values must lie in \[0, 1\].*divide by 255"):
        model.loss(with_data(b, img=b.data['img'] * 255))


def test_class_index_outside_vocabulary(model):
    b = good_batch(); y = b.data['label'].clone(); y[2] = 10
    with pytest.raises(ValueError, match=r"class indices must be in 0..9 .*row 2"):
        model.loss(with_data(b, label=y))


def test_empty_batch(model):
    b = good_batch()
    with pytest.raises(ValueError, match='empty batch'):
        model.loss(Batch({n: x[:0] for n, x in b.data.items()}, b.mask[:0], b.names))


def test_float64_input_named(model):
    b = good_batch()
    with pytest.raises(ValueError, match=r"modality 'img': input is torch.float64 but the model's parameters are torch.float32"):
        model.loss(with_data(b, img=b.data['img'].double()))


def test_sequence_token_outside_vocabulary():
    from mmvae_nb.core import check_values
    spec = ModalitySpec('text', (4,), 'sequence', n_classes=7)
    with pytest.raises(ValueError, match=r"token ids must be in 0..6"):
        check_values(spec, torch.tensor([[0, 1, 2, 3], [6, 7, 1, 1]]))


def test_quick_fit_stops_on_non_finite_loss():
    from mmvae_nb.multimodal import MultimodalDataset
    torch.manual_seed(0)
    m = MVAE.from_specs(SPECS, latent_dim=4)
    ds = MultimodalDataset({'img': (torch.rand(16, 1, 28, 28) * 255).to(torch.uint8), 'label': torch.randint(0, 10, (16,))},
                           SPECS, torch.randint(0, 10, (16,)))
    real_loss = m.loss
    def nan_loss(b):          # a loss that turns NaN (as after a divergent step) must stop quick_fit, not be logged on
        loss, terms = real_loss(b)
        return loss * float('nan'), terms
    m.loss = nan_loss
    with pytest.raises(FloatingPointError, match='quick_fit: the loss is nan at step 1'):
        quick_fit(m, ds, steps=3, batch_size=8)


def test_dataset_checks_values_once_at_construction():
    from mmvae_nb.multimodal import MultimodalDataset
    specs = (ModalitySpec('f', (3,), 'features'), ModalitySpec('t', (4,), 'sequence', n_classes=5))
    f, t = torch.randn(6, 3), torch.randint(0, 5, (6, 4))
    ds = MultimodalDataset({'f': f, 't': t}, specs, torch.zeros(6, dtype=torch.long))
    f_bad = f.clone(); f_bad[4, 1] = float('inf')
    with pytest.raises(ValueError, match=r"dataset 'multimodal': modality 'f': NaN or Inf values in row 4"):
        MultimodalDataset({'f': f_bad, 't': t}, specs, torch.zeros(6, dtype=torch.long))
    mask = torch.ones(6, 2, dtype=torch.bool); mask[4, 0] = False          # hidden: allowed
    MultimodalDataset({'f': f_bad, 't': t}, specs, torch.zeros(6, dtype=torch.long), mask=mask)
    t_bad = t.clone(); t_bad[2, 3] = 5
    with pytest.raises(ValueError, match=r"token ids must be in 0..4"):
        MultimodalDataset({'f': f, 't': t_bad}, specs, torch.zeros(6, dtype=torch.long))
    img = ModalitySpec('img', (1, 2, 2))
    with pytest.raises(ValueError, match='divide by 255'):
        MultimodalDataset({'img': torch.rand(3, 1, 2, 2) * 255}, (img,), torch.zeros(3, dtype=torch.long))
    # shared items (rows=): only items used by an observed row are checked
    items = torch.rand(4, 1, 2, 2); items[3] = float('nan')
    MultimodalDataset({'img': items}, (img,), torch.zeros(5, dtype=torch.long), rows={'img': torch.tensor([0, 1, 2, 1, 0])})


def test_classifier_on_few_distinct_items_is_an_exact_lookup_and_small_data_trains_enough_steps():
    "Issue 10: 10 distinct captions used to get 5 Adam steps and a capped coherence; now an exact lookup, with a warning."
    from mmvae_nb.multimodal import MultimodalDataset
    from mmvae_nb.classifiers import train_classifier
    import mmvae_nb.classifiers as M
    spec = ModalitySpec('text', (3,), 'sequence', n_classes=12)
    captions = torch.stack([torch.tensor([c, c + 1, 0]) for c in range(10)])
    labels = torch.arange(10).repeat(30)
    ds = MultimodalDataset({'text': captions}, (spec,), labels, rows={'text': labels})
    with pytest.warns(UserWarning, match='only 10 distinct items: classified by exact lookup'):
        clf = train_classifier(ds, 'text', epochs=5, test=ds)
    assert clf.meta['arch'] == 'lookup' and clf.meta['accuracy'] == 1.0
    assert torch.equal(clf.predict(captions[[3, 7]]), torch.tensor([3, 7]))
    # a small (but not tiny) training set still gets at least MIN_CLASSIFIER_STEPS steps
    feats = ModalitySpec('f', (2,), 'features')
    y = torch.arange(4).repeat(50)
    x = torch.nn.functional.one_hot(y, 4)[:, :2].float() * 3 + torch.randn(200, 2) * 0.1 + y[:, None].float()
    steps = []
    real_step = torch.optim.Adam.step
    def counting_step(self, *a, **k): steps.append(1); return real_step(self, *a, **k)
    torch.optim.Adam.step = counting_step
    try: train_classifier(MultimodalDataset({'f': x}, (feats,), y), 'f', epochs=1, batch_size=256)
    finally: torch.optim.Adam.step = real_step
    assert len(steps) >= M.MIN_CLASSIFIER_STEPS
