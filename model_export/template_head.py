"""The template-recognition head: standardise + linear + softmax, fitted at export time.

Fitted by ridge regression to one-hot targets on features of augmented template views
(closed form: deterministic and fast for ~2k views x 2048 features), with the ridge strength
and the softmax temperature chosen on separate calibration views (against label-smoothed
targets, see CALIBRATION_SMOOTHING).

The head's logits are then fused with the pixel match of model_export/template_match.py:
softmax(logits / temperature + match_weight * atanh(match)). Fisher's atanh stretches the
correlations near 1 that only the right template reaches, so a near-perfect match outweighs
features that are sure of the wrong template. The weight is chosen on the calibration views
against images that are no template (choose_match_weight).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

RIDGE_STRENGTHS = (1.0, 10.0, 100.0, 1000.0)
# Calibration targets keep this much probability spread over all templates. Augmented views
# of the templates themselves are nearly always recognised, so plain NLL would drive the
# temperature to 0 and every upload, memes or not, would get a one-hot template_probs.
CALIBRATION_SMOOTHING = 0.05
# Ridge logits are small (targets are 0/1), so calibrated temperatures can be far below 1.
TEMPERATURES = np.geomspace(1e-5, 10.0, 121)


@dataclass
class TemplateHead:
    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    weights: np.ndarray  # [D, T]
    bias: np.ndarray  # [T]
    temperature: float
    match_weight: float = 0.0  # 0: the features alone decide

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def probs(self, features: np.ndarray, match: np.ndarray | None = None) -> np.ndarray:
        """Template probabilities from FEATURES [N, D] and, when the head has a match weight,
        the pixel MATCH [N, T] (correlations, template_match.match_scores)."""
        z = self.logits(features) / self.temperature
        if self.match_weight:
            if match is None:
                raise ValueError("this head fuses the pixel match: pass the match scores")
            z = z + self.match_weight * match_evidence(match)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def _ridge(
    x: np.ndarray, targets: np.ndarray, strength: float, gram: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights and bias; GRAM (from _gram) may be passed when solving for several strengths."""
    centred = targets - targets.mean(axis=0)
    gram = _gram(x) if gram is None else gram
    regularised = gram + strength * np.eye(len(gram))
    if x.shape[1] <= x.shape[0]:
        weights = np.linalg.solve(regularised, x.T @ centred)
    else:  # more features than views: the same solution, from the smaller [views, views] system
        weights = x.T @ np.linalg.solve(regularised, centred)
    return weights, targets.mean(axis=0)


def _gram(x: np.ndarray) -> np.ndarray:
    return x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T


def _smoothed_nll(head: TemplateHead, features, labels) -> float:
    """Cross-entropy against (1 - s) * one-hot + s * uniform targets."""
    log_p = np.log(np.maximum(head.probs(features), 1e-300))
    num_templates = log_p.shape[1]
    targets = np.full(log_p.shape, CALIBRATION_SMOOTHING / num_templates)
    targets[np.arange(len(labels)), labels] += 1.0 - CALIBRATION_SMOOTHING
    return float(-np.mean(np.sum(targets * log_p, axis=1)))


def fit_template_head(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    calib_features: np.ndarray,
    calib_labels: np.ndarray,
    num_templates: int,
) -> TemplateHead:
    fit_features = fit_features.astype(np.float64)
    mean = fit_features.mean(axis=0)
    scale = fit_features.std(axis=0) + 1e-6
    x = (fit_features - mean) / scale
    targets = np.eye(num_templates)[fit_labels]
    best = None
    gram = _gram(x)
    for strength in RIDGE_STRENGTHS:
        weights, bias = _ridge(x, targets, strength, gram)
        head = TemplateHead(mean, scale, weights, bias, 1.0)
        accuracy = np.mean(head.logits(calib_features).argmax(axis=1) == calib_labels)
        if best is None or accuracy > best[0]:
            best = (accuracy, head)
    assert best is not None  # RIDGE_STRENGTHS is not empty
    head = best[1]
    head.temperature = float(
        min(TEMPERATURES, key=lambda t: _smoothed_nll(_with(head, t), calib_features, calib_labels))
    )
    return head


def _with(head: TemplateHead, temperature: float) -> TemplateHead:
    return replace(head, temperature=float(temperature))


# The largest correlation atanh sees: a perfect match counts as much as 0.995 (atanh 3.0), not infinitely.
MAX_CORRELATION = 0.995
MATCH_WEIGHTS = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def match_evidence(match: np.ndarray) -> np.ndarray:
    """Fisher's z of the match correlations: what the fused logits add, per unit of weight."""
    return np.arctanh(np.clip(match, -MAX_CORRELATION, MAX_CORRELATION))


@dataclass
class Encoded:
    """What the encoder computes for images as the gateway sends them: each image's own view
    and, for some, a second one (the picture inside it, memefly/content_view.py)."""

    features: np.ndarray  # [V, D], the images' own views first, in image order
    match: np.ndarray  # [V, T]
    image: np.ndarray  # [V]: the image each view is of

    @property
    def own_features(self) -> np.ndarray:
        """[N, D]: the features of each image's own view."""
        return self.features[: len(np.unique(self.image))]

    @classmethod
    def single(cls, features: np.ndarray, match: np.ndarray) -> Encoded:
        """One view per image."""
        return cls(features, match, np.arange(len(features)))


def served_probs(head: TemplateHead, encoded: Encoded) -> np.ndarray:
    """[N, T]: per image, the probabilities of its most confident view, as the gateway keeps
    (memefly.content_view.most_confident; on a tie, the image's own view)."""
    probs = head.probs(encoded.features, encoded.match)
    order = np.lexsort((-known_score(probs), encoded.image))  # stable: own views come first
    _, first = np.unique(encoded.image[order], return_index=True)
    return probs[order[first]]


def choose_match_weight(head: TemplateHead, views: Encoded, labels: np.ndarray, others: Encoded) -> tuple[float, float]:
    """(weight, threshold): the match weight of MATCH_WEIGHTS under which the most template
    VIEWS are recognised and called known at the threshold that calls UNKNOWN_RATE of the
    OTHERS (images that are no template) unknown; on ties, the one that recognises most views,
    then the smallest. A view called known as the wrong template counts against a weight."""
    best = None
    for weight in MATCH_WEIGHTS:
        trial = replace(head, match_weight=weight)
        probs = served_probs(trial, views)
        threshold = choose_known_threshold(known_score(probs), known_score(served_probs(trial, others)))
        right = probs.argmax(axis=1) == labels
        rank = (float(np.mean(right & (known_score(probs) >= threshold))), float(np.mean(right)), -weight)
        if best is None or rank > best[0]:
            best = (rank, weight, threshold)
    assert best is not None  # MATCH_WEIGHTS is not empty
    return best[1], best[2]


def known_score(probs: np.ndarray) -> np.ndarray:
    """How sure the head is that an image is one of its templates: its top probability."""
    return probs.max(axis=1)


# The share of images that are no template that the known-template threshold calls unknown.
# Fixing it, rather than balancing the two errors, keeps every template view above it known:
# generated non-templates are harder to tell from templates than the photos people upload.
UNKNOWN_RATE = 0.95


def choose_known_threshold(known: np.ndarray, unknown: np.ndarray, unknown_rate: float = UNKNOWN_RATE) -> float:
    """The lowest top-probability threshold that calls at least UNKNOWN_RATE of the images that
    are no template (UNKNOWN scores) unknown, placed mid-way to the next score above it of
    either set; template views (KNOWN scores) at or above it are called known. Above every
    score when only that is enough."""
    scores = np.unique(np.concatenate([known, unknown]))
    cuts = np.concatenate([[0.0], (scores[:-1] + scores[1:]) / 2, [np.nextafter(scores[-1], np.inf)]])
    enough = np.flatnonzero((unknown[None, :] < cuts[:, None]).mean(axis=1) >= unknown_rate - 1e-12)
    return float(cuts[enough[0]])
