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


def test_known_threshold_is_the_lowest_cut_that_calls_enough_non_templates_unknown():
    from model_export.template_head import choose_known_threshold

    # separable: mid-way between the highest non-template and the lowest template view
    assert choose_known_threshold(np.array([0.9, 0.8, 0.95]), np.array([0.1, 0.3])) == np.float64(0.55)
    # 20 non-templates: the one at 0.7 may be called known (0.95 of them are still unknown),
    # so the template view at 0.6 stays known
    others = np.concatenate([np.linspace(0.0, 0.5, 19), [0.7]])
    threshold = choose_known_threshold(np.array([0.6, 0.9]), others)
    assert 0.5 < threshold <= 0.6
    # 20 again, two of them above that view (0.65 and 0.7): only one may be let through, so the
    # cut goes between them, and the view at 0.6 is called unknown
    two_high = np.concatenate([np.linspace(0.0, 0.5, 18), [0.65, 0.7]])
    stricter = choose_known_threshold(np.array([0.6, 0.9]), two_high)
    assert 0.65 < stricter < 0.7
    # non-templates scoring as high as can be: the cut lies above them, calling them unknown
    saturated = choose_known_threshold(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
    assert saturated > 1.0 and not np.any(np.array([1.0]) >= saturated)


def test_the_pixel_match_outweighs_features_that_are_sure_of_the_wrong_template():
    from model_export.template_head import Encoded, choose_match_weight, known_score

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(6, 32)) * 3
    head = fit_template_head(*clustered_views(rng, centers, 300), *clustered_views(rng, centers, 120), 6)
    x, labels = clustered_views(rng, centers, 200)
    confusing = rng.random(200) < 0.3  # a third of the views look like the next template to the features
    x[confusing] = centers[(labels[confusing] + 1) % 6] + rng.normal(size=(confusing.sum(), 32))
    match = rng.uniform(0.2, 0.6, (200, 6))
    match[np.arange(200), labels] = rng.uniform(0.9, 1.0, 200)  # the pixels agree with the right one
    others = rng.normal(size=(200, 32)) * 3
    other_match = rng.uniform(0.2, 0.6, (200, 6))
    assert np.mean(head.probs(x).argmax(axis=1) == labels) < 0.8
    weight, threshold = choose_match_weight(head, Encoded.single(x, match), labels, Encoded.single(others, other_match))
    assert weight > 0
    head.match_weight = weight
    assert np.mean(head.probs(x, match).argmax(axis=1) == labels) > 0.97
    assert np.mean(known_score(head.probs(x, match)) >= threshold) > 0.97
    assert np.mean(known_score(head.probs(others, other_match)) < threshold) >= 0.95
    assert np.allclose(head.probs(x, match).sum(axis=1), 1.0)


def test_a_match_that_tells_nothing_gets_no_weight_and_a_fused_head_needs_the_match():
    import pytest

    from model_export.template_head import Encoded, choose_match_weight

    rng = np.random.default_rng(4)
    centers = rng.normal(size=(6, 32)) * 3
    head = fit_template_head(*clustered_views(rng, centers, 300), *clustered_views(rng, centers, 120), 6)
    x, labels = clustered_views(rng, centers, 200)
    others = rng.normal(size=(200, 32)) * 3
    noise = rng.uniform(0.2, 0.6, (200, 6))  # the same kind of scores for templates and others
    weight, _ = choose_match_weight(
        head, Encoded.single(x, noise), labels, Encoded.single(others, rng.uniform(0.2, 0.6, (200, 6)))
    )
    assert weight == 0.0
    head.match_weight = 4.0
    with pytest.raises(ValueError, match="match"):
        head.probs(x)


def test_non_template_images_are_seeded_and_cover_every_kind():
    from PIL import Image

    from model_export.non_templates import KINDS, non_template_images

    templates = [Image.new("RGB", (300, 200), (i * 60, 100, 50)) for i in range(3)]
    made = non_template_images(len(KINDS) * 2, seed=5, templates=templates)
    again = non_template_images(len(KINDS) * 2, seed=5, templates=templates)
    other = non_template_images(len(KINDS) * 2, seed=6, templates=templates)
    assert [k for k, _ in made] == list(KINDS) * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(made, again, strict=True))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(made, other, strict=True))
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


def test_served_probabilities_are_each_images_most_confident_view():
    from memefly.content_view import most_confident
    from model_export.template_head import Encoded, served_probs

    rng = np.random.default_rng(5)
    centers = rng.normal(size=(6, 32)) * 3
    head = fit_template_head(*clustered_views(rng, centers, 300), *clustered_views(rng, centers, 120), 6)
    own, _ = clustered_views(rng, centers, 5)
    own[1] = centers[:2].mean(axis=0)  # unsure on its own
    inside, _ = clustered_views(rng, centers, 2)  # second views of images 1 and 3
    encoded = Encoded(np.concatenate([own, inside]), np.zeros((7, 6)), np.array([0, 1, 2, 3, 4, 1, 3]))
    each = head.probs(encoded.features)
    expected = [each[0], most_confident([each[1], each[5]]), each[2], most_confident([each[3], each[6]]), each[4]]
    assert np.array_equal(served_probs(head, encoded), np.stack(expected))
    assert np.array_equal(served_probs(head, encoded)[1], each[5])  # the second view was the surer


def test_a_tie_between_views_keeps_the_images_own_view():
    from model_export.template_head import Encoded, TemplateHead, served_probs

    # features count for nothing here: the probabilities are softmax(atanh(match))
    head = TemplateHead(np.zeros(2), np.ones(2), np.zeros((2, 3)), np.zeros(3), 1.0, match_weight=1.0)
    match = np.array(
        [
            [0.5, 0.1, 0.0],  # image 0, its own view
            [0.2, 0.2, 0.2],  # image 1, its own view
            [0.5, 0.0, 0.1],  # image 0, second view: as sure, other probabilities
            [0.9, 0.0, 0.0],
        ]
    )  # image 1, second view: surer
    encoded = Encoded(np.zeros((4, 2)), match, np.array([0, 1, 0, 1]))
    each = head.probs(encoded.features, match)
    assert each[0].max() == each[2].max() and not np.array_equal(each[0], each[2])
    served = served_probs(head, encoded)
    assert np.array_equal(served[0], each[0]) and np.array_equal(served[1], each[3])
