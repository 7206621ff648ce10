"""Family search: the split's invariants, the metrics against hand-computed cases, the decomposed head against the
model's own head, the fast path against exact scoring, and the index (incremental, resumed, damaged shard)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kinship.search.metrics import average_precision, search_metrics, search_report
from kinship.search.scoring import FastConfig, GalleryScorer, HeadWeights, checked, head_weights_of_state


# ----------------------------------------------------------------------------------------------- split


@pytest.fixture(scope="module")
def search_data(tiny_data):
    from kinship.layout import read_dataset
    from kinship.pairs import ImageTable, split_families

    dataset = read_dataset(tiny_data, verify_images=False)
    return dataset, ImageTable.from_dataset(dataset), split_families(dataset, 0.5, seed=0).val


def test_split_keeps_probe_families_in_gallery_and_distractors_apart(search_data):
    from kinship.search.split import SearchSplitConfig, search_split

    dataset, table, held_out = search_data
    split = search_split(dataset, table, held_out, SearchSplitConfig(probe_families=4, distractor_families=2, seed=1))
    gallery_families = {person.split("/")[0] for person in split.gallery_person}
    assert len(split.probes) == 4 and len(split.distractor_families) == 2
    assert set(split.probe_families) <= gallery_families  # every probe's family has members to find
    assert not set(split.distractor_families) & set(split.probe_families)
    assert gallery_families == set(split.probe_families) | set(split.distractor_families)
    assert gallery_families <= set(held_out)
    relevant, kinds = split.relevance()
    for row, probe in enumerate(split.probes):
        assert probe.person not in split.gallery_person  # a probe never finds itself
        assert relevant[row].any()
        found = {split.gallery_person[i] for i in np.flatnonzero(relevant[row])}
        assert found == set(probe.relatives) and all(p.split("/")[0] == probe.person.split("/")[0] for p in found)
    assert set(split.gallery.tolist()).isdisjoint(i for p in split.probes for i in p.images)


# ----------------------------------------------------------------------------------------------- metrics


def test_average_precision_and_cmc_by_hand():
    # relevant at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5
    assert average_precision(np.array([0, 1, 0, 1, 0])) == pytest.approx(0.5)
    assert average_precision(np.array([1, 1, 0])) == pytest.approx(1.0)
    assert average_precision(np.array([0, 0, 0])) == 0.0
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],   # relevant at ranks 2, 4 -> AP 0.5, first hit 2
                       [0.1, 0.2, 0.3, 0.4, 0.5]])  # order 4,3,2,1,0: relevant {0} at rank 5 -> AP 0.2
    relevant = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=bool)
    metrics = search_metrics(scores, relevant, ranks=(1, 2, 5))
    assert metrics.mean_ap == pytest.approx((0.5 + 0.2) / 2)
    assert metrics.rank_at == {1: 0.0, 2: 0.5, 5: 1.0}


def test_per_type_report_removes_the_other_relatives():
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    kinds = np.array([["fd", "", "bb", ""]], dtype=object)
    report = search_report(scores, kinds, ranks=(1, 2))
    assert report.overall.mean_ap == pytest.approx((1 + 2 / 3) / 2)
    assert report.by_type["fd"].mean_ap == pytest.approx(1.0)
    assert report.by_type["bb"].mean_ap == pytest.approx(0.5)  # the fd image is out: bb is second behind one stranger
    assert report.by_type["bb"].rank_at == {1: 0.0, 2: 1.0}


# ----------------------------------------------------------------------------------------------- scoring


def _heads(kind: str):
    import torch

    from kinship.model import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(image_size=32, width=8, embedding_dim=16, head_hidden=12, members=3 if kind == "ensemble" else 1,
                         arch="seed" if kind == "seed" else "residual")
    return build_model(config).eval()


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_decomposed_head_matches_the_model(kind):
    import torch

    model = _heads(kind)
    state = {k: v.numpy() for k, v in model.head.state_dict().items()}
    weights = head_weights_of_state(state)

    def head(a, b):
        with torch.inference_mode():
            return model.head(torch.from_numpy(a), torch.from_numpy(b)).numpy()

    assert checked(weights, head, weights.dim, tolerance=1e-5) is weights
    broken = head_weights_of_state({**state, next(k for k in state if k.endswith("0.bias")): np.zeros(12)})
    assert checked(broken, head, weights.dim, tolerance=1e-5) is None  # a wrong decomposition is refused


def test_seed_head_does_not_decompose():
    model = _heads("seed")
    assert head_weights_of_state({k: v.numpy() for k, v in model.head.state_dict().items()}) is None


@pytest.fixture(scope="module")
def trained_gallery(tiny_run, tiny_data):
    """The tiny trained model's head and a 20,000-image gallery: its embeddings of the tiny set's photos, plus
    Gaussian embeddings with their mean and covariance (unit length, as the encoder makes them)."""
    from kinship.data import prepare
    from kinship.inference import open_scorer
    from kinship.search.eval import embed_rows
    from kinship.search.scoring import head_weights_of_model

    scorer = open_scorer(tiny_run / "model.pt")
    prepared = prepare(tiny_data, scorer.image_size)
    real = embed_rows(scorer, prepared.pixels, np.arange(len(prepared.table)))
    rng = np.random.default_rng(0)
    fake = rng.multivariate_normal(real.mean(0), np.cov(real.T), size=20_000 - len(real)).astype(np.float32)
    gallery = np.concatenate((real, fake / np.linalg.norm(fake, axis=1, keepdims=True)))
    weights = checked(head_weights_of_model(tiny_run / "model.pt"), scorer.head, real.shape[1])
    return weights, gallery, real[rng.choice(len(real), 8, replace=False)]


@pytest.mark.parametrize("config", [FastConfig(rank=0), FastConfig(rank=24), FastConfig()],
                         ids=["full", "pca24", "default"])
def test_fast_path_top_results_equal_exact(trained_gallery, config):
    weights, gallery, probes = trained_gallery
    assert weights is not None
    scorer = GalleryScorer(gallery, weights, config)
    for probe in probes:
        exact = scorer.exact(probe)
        rows, logits = scorer.search(probe, 20)
        truth = np.argsort(-exact, kind="stable")[:20]
        assert rows.tolist() == truth.tolist()
        np.testing.assert_allclose(logits, exact[truth], rtol=1e-5, atol=1e-5)
