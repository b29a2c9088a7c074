"""The template-recognition head: standardise + linear + softmax, fitted at export time.

Fitted by ridge regression to one-hot targets on features of augmented template views
(closed form: deterministic and fast for ~2k views x 2048 features), with the ridge strength
and the softmax temperature chosen on separate calibration views (against label-smoothed
targets, see CALIBRATION_SMOOTHING).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def probs(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def _ridge(x: np.ndarray, targets: np.ndarray, strength: float, gram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    fit_features: np.ndarray, fit_labels: np.ndarray, calib_features: np.ndarray, calib_labels: np.ndarray, num_templates: int
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
    head = best[1]
    head.temperature = float(min(TEMPERATURES, key=lambda t: _smoothed_nll(_with(head, t), calib_features, calib_labels)))
    return head


def _with(head: TemplateHead, temperature: float) -> TemplateHead:
    return TemplateHead(head.mean, head.scale, head.weights, head.bias, float(temperature))


def known_score(probs: np.ndarray) -> np.ndarray:
    """How sure the head is that an image is one of its templates: its top probability."""
    return probs.max(axis=1)


def choose_known_threshold(known: np.ndarray, unknown: np.ndarray) -> float:
    """The top-probability threshold that best separates template views (KNOWN scores) from
    images that are no template (UNKNOWN scores): the most balanced accuracy, mid-way between
    the two scores it falls between; on ties the lowest (a template wrongly called unknown
    loses the user more than the reverse)."""
    scores = np.unique(np.concatenate([known, unknown]))
    cuts = np.concatenate([[0.0], (scores[:-1] + scores[1:]) / 2, [1.0]])
    known_rate = (known[None, :] >= cuts[:, None]).mean(axis=1)
    unknown_rate = (unknown[None, :] < cuts[:, None]).mean(axis=1)
    return float(cuts[int(np.argmax(known_rate + unknown_rate))])
