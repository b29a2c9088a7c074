"""The template head: a linear classifier on features, calibrated so it is sure but not certain."""

import numpy as np

from model_export.template_head import CALIBRATION_SMOOTHING, fit_template_head


def clustered_views(rng, centers, n):
    labels = rng.integers(0, len(centers), n)
    return centers[labels] + rng.normal(size=(n, centers.shape[1])), labels


def test_recognises_held_out_views_without_becoming_one_hot():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 32)) * 3
    head = fit_template_head(*clustered_views(rng, centers, 300), *clustered_views(rng, centers, 120), 6)
    test_x, test_y = clustered_views(rng, centers, 200)
    probs = head.probs(test_x)
    assert np.mean(probs.argmax(axis=1) == test_y) > 0.95
    assert np.allclose(probs.sum(axis=1), 1.0)
    # Smoothed calibration: confident on easy views, yet never a hard one-hot.
    assert 0.9 < probs.max(axis=1).mean() < 1.0 - CALIBRATION_SMOOTHING / 2


def test_features_unlike_any_template_get_spread_probabilities():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(6, 32)) * 3
    head = fit_template_head(*clustered_views(rng, centers, 300), *clustered_views(rng, centers, 120), 6)
    between = centers[:2].mean(axis=0, keepdims=True)  # halfway between two templates
    assert head.probs(between).max() < 0.9


def test_known_threshold_separates_template_views_from_other_images():
    from model_export.template_head import choose_known_threshold, known_score

    rng = np.random.default_rng(1)
    centers = rng.normal(size=(6, 32)) * 3
    head = fit_template_head(*clustered_views(rng, centers, 300), *clustered_views(rng, centers, 120), 6)
    views, _ = clustered_views(rng, centers, 200)
    others = rng.normal(size=(200, 32)) * 3  # no template's cluster
    threshold = choose_known_threshold(known_score(head.probs(views)), known_score(head.probs(others)))
    new_views, _ = clustered_views(rng, centers, 200)
    new_others = rng.normal(size=(200, 32)) * 3
    assert np.mean(known_score(head.probs(new_views)) >= threshold) > 0.9
    assert np.mean(known_score(head.probs(new_others)) < threshold) > 0.9


def test_known_threshold_lies_between_the_scores_and_ties_favour_known():
    from model_export.template_head import choose_known_threshold

    assert choose_known_threshold(np.array([0.9, 0.8, 0.95]), np.array([0.1, 0.3])) == np.float64(0.55)
    # overlapping: calling 0.5 unknown or 0.6 known costs the same; the lower cut wins
    threshold = choose_known_threshold(np.array([0.5, 0.9]), np.array([0.6, 0.2]))
    assert 0.2 < threshold <= 0.5


def test_non_template_images_are_seeded_and_cover_every_kind():
    from PIL import Image

    from model_export.non_templates import KINDS, non_template_images

    templates = [Image.new("RGB", (300, 200), (i * 60, 100, 50)) for i in range(3)]
    made = non_template_images(len(KINDS) * 2, seed=5, templates=templates)
    again = non_template_images(len(KINDS) * 2, seed=5, templates=templates)
    other = non_template_images(len(KINDS) * 2, seed=6, templates=templates)
    assert [k for k, _ in made] == list(KINDS) * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(made, again))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(made, other))
    for _, image in made:
        assert image.mode == "RGB" and min(image.size) >= 200


def test_more_features_than_views_fit_the_same_head_as_the_feature_form():
    from model_export.template_head import _ridge

    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 25))
    targets = np.eye(4)[rng.integers(0, 4, 40)]
    wide = np.concatenate([x, rng.normal(size=(40, 60))], axis=1)  # 85 features > 40 views
    primal = np.linalg.solve(wide.T @ wide + 10.0 * np.eye(85), wide.T @ (targets - targets.mean(axis=0)))
    weights, bias = _ridge(wide, targets, 10.0)
    assert np.allclose(weights, primal, atol=1e-10)
    assert np.allclose(bias, targets.mean(axis=0))
