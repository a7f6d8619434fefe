"Checks of mmvae_nb.figures: atomic PNG saving, item pictures, grids drawn through the model interface, relatedness plots (the explorers: test_explorers.py)."
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.figures import (as_images, class_distance_heatmap, coherence_heatmap, cross_generation_grid, dendrogram_plot,
                              item_cross_generations, item_grid, joint_samples_grid, latent_scatter, latent_traversal,
                              reconstruction_grid, save_figure, w2_histogram)
from mmvae_nb.models import Modality, MultimodalVAE, UniformMixture
from mmvae_nb.multimodal import MultimodalDataset

SPECS = (ModalitySpec('img', (1, 8, 8), 'image'), ModalitySpec('feat', (5,), 'features'))


from toy import toy_modality


class TinyMoE(MultimodalVAE):
    def joint_posterior(self, batch):
        qs = self.unimodal_posteriors(batch)
        return UniformMixture(list(qs.values()), torch.stack([batch.observed(n) for n in qs], -1))


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = TinyMoE([toy_modality(s, 3) for s in SPECS], latent_dim=3)
    ds = MultimodalDataset({'img': torch.rand(30, 1, 8, 8), 'feat': torch.rand(30, 5)}, SPECS, torch.arange(30) % 10, name='tiny')
    return model, ds


def test_save_figure_is_atomic_png(tmp_path):
    fig, ax = plt.subplots(figsize=(1, 1)); ax.plot([0, 1])
    p = save_figure(fig, tmp_path/'a'/'f.png')
    assert p.read_bytes().startswith(b'\x89PNG') and [q.name for q in p.parent.iterdir()] == ['f.png']
    with pytest.raises(ValueError, match='PNG'):
        save_figure(plt.figure(), tmp_path/'f.svg')


def test_items_become_pictures():
    assert as_images(torch.rand(2, 7), ModalitySpec('f', (7,), 'features')).shape == (2, 1, 3, 3)
    assert as_images(torch.tensor([1]), ModalitySpec('y', (), 'categorical', n_classes=4)).shape == (1, 1, 1, 4)
    g = item_grid(torch.rand(3, 1, 8, 8), SPECS[0])
    assert g.shape == (10, 28, 3) and g.min() >= 0 and g.max() <= 1


def test_grids_through_the_interface(setup, tmp_path):
    model, ds = setup
    b = ds.batch(torch.arange(6))
    assert len(cross_generation_grid(model, b, n=4).axes) == 2 * (1 + 2)      # per source: input + 2 targets
    assert len(reconstruction_grid(model, b).axes) == 4
    assert len(joint_samples_grid(model, n=5).axes) == 2
    fig = latent_traversal(model, b, 'img', dims=[0, 2], steps=4)
    assert fig.axes[0].images[0].get_array().shape[:2] == (2 * 9 + 1, 4 * 9 + 1)
    assert save_figure(fig, tmp_path/'t.png').stat().st_size < 50_000
    plt.close('all')


def test_relatedness_plots():
    rng = np.random.default_rng(0)
    res = {'related': rng.random(50), 'unrelated': rng.random(500) + 1, 'source': 'a', 'target': 'b', 'auc': 1.0}
    assert len(w2_histogram(res, bins=10).axes[0].patches) == 20
    K = rng.random((4, 4)) + 1; np.fill_diagonal(K, 0)
    assert class_distance_heatmap(K).axes
    assert len(dendrogram_plot(K, labels='abcd').axes[0].get_xticklabels()) == 4
    emb = {'xy': rng.normal(size=(6, 2)), 'labels': np.array([0, 1, 2] * 2), 'modality': np.array(['a'] * 3 + ['b'] * 3), 'method': 'pca'}
    assert len(latent_scatter(emb).axes[0].collections) == 2
    rows = [{'metric': 'cross_coherence', 'given': 'a', 'target': 'b', 'value': .5, 'classifier_accuracy': .9},
            {'metric': 'self_coherence', 'given': 'a', 'target': 'a', 'value': .9, 'classifier_accuracy': .95}]
    assert len(coherence_heatmap(rows).axes[0].texts) == 2
    plt.close('all')


def test_item_cross_generations(setup):
    model, ds = setup
    fig = item_cross_generations(model, ds, 'img', 5, n_samples=2)
    assert len(fig.axes) == 3 and fig.axes[0].get_title(loc='left') == 'img: item 5 (label 5)'
    with pytest.raises(ValueError, match='item 30 is outside 0..29'):
        item_cross_generations(model, ds, 'img', 30)
    plt.close('all')
