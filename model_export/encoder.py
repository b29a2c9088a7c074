"""The image encoder: InceptionV3 features and template probabilities, preprocessing in the graph.

Decoding (JPEG, PNG, GIF first frame, BMP), resizing to 299x299 (bilinear, antialiased) and
InceptionV3's scaling happen inside the exported graph, so every caller, and the head
fitting at export time, computes features with the very same function.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from memefly import contract as c
from memefly import paths
from model_export.template_head import MAX_CORRELATION, TemplateHead
from model_export.template_match import match_scores


def weights_id(weights: str, seed: int) -> str:
    """A name for the backbone weights, for the feature cache and the export log."""
    if weights == "random":
        return f"random-seed{seed}"
    if weights == "imagenet":
        return "imagenet"
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    return f"file-{digest}"


def build_backbone(weights: str = "imagenet", seed: int = 0):
    """InceptionV3 without its classifier, average-pooled to 2048 features.

    weights: "imagenet" (Keras' download), a path to a no-top weights file, or "random"
    (seeded initialisation: what tests and offline machines use).
    """
    import keras

    if weights == "random":
        keras.utils.set_random_seed(seed)
        source = None
    elif weights == "imagenet":
        source = "imagenet"
    else:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"InceptionV3 weights file not found: {weights}")
        source = weights
    try:
        return keras.applications.InceptionV3(
            include_top=False, weights=source, pooling="avg", input_shape=(c.IMAGE_SIZE, c.IMAGE_SIZE, 3)
        )
    except Exception as e:  # the download fails offline: say what to do instead
        if weights == "imagenet":
            raise RuntimeError(
                "could not get Keras' ImageNet InceptionV3 weights (offline?). Pass a local no-top "
                "weights file path, or `random` with a seed, as --weights."
            ) from e
        raise


def decode_and_resize(image_bytes: tf.Tensor) -> tf.Tensor:
    """One encoded image -> float32 [299, 299, 3] in 0..255."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return resize(image)


def resize(image: tf.Tensor) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    size = tf.shape(image)[:2]
    already = tf.reduce_all(tf.equal(size, [c.IMAGE_SIZE, c.IMAGE_SIZE]))
    # Resizing a 299x299 image is skipped, so bytes and pixels of one image agree exactly.
    return tf.cond(
        already,
        lambda: image,
        lambda: tf.image.resize(image, [c.IMAGE_SIZE, c.IMAGE_SIZE], method="bilinear", antialias=True),
    )


def decode_batch(image_bytes: tf.Tensor) -> tf.Tensor:
    """string [N] -> float32 [N, 299, 299, 3] in 0..255."""
    return tf.map_fn(
        decode_and_resize, image_bytes, fn_output_signature=tf.TensorSpec([c.IMAGE_SIZE, c.IMAGE_SIZE, 3], tf.float32)
    )


def backbone_features(backbone, images: tf.Tensor) -> tf.Tensor:
    """float32 [N, 299, 299, 3] in 0..255 -> [N, 2048], with InceptionV3's scaling to -1..1."""
    return backbone(images / 127.5 - 1.0, training=False)


class EncoderServing(tf.Module):
    """What the encoder SavedModel serves. Signatures are attached by export_encoder."""

    def __init__(self, backbone, head: TemplateHead, match_descriptors: np.ndarray, metadata: dict[str, str]):
        super().__init__(name="memefly_encoder")
        self._backbone = Untracked(backbone)
        self.backbone_variables = tracked_variables(backbone)
        self.head_mean = tf.Variable(head.mean, dtype=tf.float32, trainable=False, name="head_mean")
        self.head_scale = tf.Variable(head.scale, dtype=tf.float32, trainable=False, name="head_scale")
        self.head_weights = tf.Variable(head.weights, dtype=tf.float32, trainable=False, name="head_weights")
        self.head_bias = tf.Variable(head.bias, dtype=tf.float32, trainable=False, name="head_bias")
        self.head_temperature = tf.Variable(
            head.temperature, dtype=tf.float32, trainable=False, name="head_temperature"
        )
        self.match_weight = tf.Variable(head.match_weight, dtype=tf.float32, trainable=False, name="match_weight")
        # Grey values 0..1 lose nothing that matters in float16, and the model is 24 MB smaller.
        self.match_descriptors = tf.Variable(
            match_descriptors, dtype=tf.float16, trainable=False, name="match_descriptors"
        )
        self.metadata_table = metadata_table(metadata)

    def _outputs(self, images: tf.Tensor) -> dict:
        """float32 [N, 299, 299, 3] in 0..255 -> the contract's outputs (template_head.py: the fused logits)."""
        features = backbone_features(self._backbone.value, images)
        logits = ((features - self.head_mean) / self.head_scale) @ self.head_weights + self.head_bias
        match = match_scores(images, self.match_descriptors)
        evidence = tf.atanh(tf.clip_by_value(match, -MAX_CORRELATION, MAX_CORRELATION))
        fused = logits / self.head_temperature + self.match_weight * evidence
        return {c.FEATURES: features, c.TEMPLATE_PROBS: tf.nn.softmax(fused)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=c.IMAGE_BYTES)])
    def serve_bytes(self, image_bytes):
        return self._outputs(decode_batch(image_bytes))

    @tf.function(input_signature=[tf.TensorSpec([None, c.IMAGE_SIZE, c.IMAGE_SIZE, 3], tf.uint8, name=c.IMAGES)])
    def serve_pixels(self, images):
        return self._outputs(tf.cast(images, tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=c.KEYS)])
    def metadata(self, keys):
        return {c.VALUES: self.metadata_table.lookup(keys)}


class Untracked:
    """Holds a Keras 3 model out of tf.Module's dependency tracking (see tracked_variables)."""

    def __init__(self, value):
        self.value = value


def tracked_variables(model) -> list:
    """The tf.Variables behind a Keras 3 model, in a list a tf.Module tracks.

    Held as a tf.Module attribute, a Keras 3 model is saved through its own Keras
    variables, while the traced graph reads the tf.Variables inside them: the SavedModel
    then holds every weight twice and the TF1 loader cannot find the ones the graph reads.
    Keras' own ExportArchive.track saves `v.value` in the same way.
    """
    return [v.value for v in model.variables]


def metadata_table(metadata: dict[str, str]) -> tf.lookup.StaticHashTable:
    keys = sorted(metadata)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant([metadata[k] for k in keys])),
        default_value="",
    )


class FeatureExtractor:
    """Backbone features of encoded images, cached on disk by image hash and weights."""

    def __init__(self, backbone, weights_name: str, cache_dir: str | Path | None = None, batch_size: int = 16):
        self.backbone, self.batch_size = backbone, batch_size
        root = Path(cache_dir) if cache_dir else paths.cache_dir()
        self.cache = root / "features" / weights_name
        self.cache.mkdir(parents=True, exist_ok=True)

        # The serving graph's own path from bytes to features, so the head is fitted on
        # exactly what the server computes.
        self._features = tf.function(
            lambda image_bytes: backbone_features(self.backbone, decode_batch(image_bytes)),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )

    def __call__(self, images: list[bytes], progress: bool = True, desc: str = "features") -> np.ndarray:
        from tqdm import tqdm

        keys = [hashlib.sha256(b).hexdigest() for b in images]
        out: dict[str, np.ndarray] = {}
        missing = []
        for key, data in zip(keys, images, strict=True):
            path = self.cache / f"{key}.npy"
            if key in out:
                continue
            if path.exists():
                out[key] = np.load(path)
            else:
                missing.append((key, data))
        unique_missing = list(dict(missing).items())
        with tqdm(total=len(unique_missing), desc=desc, disable=not progress or not unique_missing) as bar:
            for start in range(0, len(unique_missing), self.batch_size):
                batch = unique_missing[start : start + self.batch_size]
                feats = self._features(tf.constant([d for _, d in batch])).numpy()
                for (key, _), f in zip(batch, feats, strict=True):
                    np.save(self.cache / f"{key}.npy", f)
                    out[key] = f
                bar.update(len(batch))
        return np.stack([out[k] for k in keys]) if keys else np.zeros((0, c.FEATURE_DIM), np.float32)


class MatchScorer:
    """Pixel match scores (template_match.py) of encoded images, decoded as the serving graph decodes them."""

    def __init__(self, descriptors: np.ndarray, batch_size: int = 32):
        self.batch_size = batch_size
        held = tf.constant(descriptors)
        self._scores = tf.function(
            lambda image_bytes: match_scores(decode_batch(image_bytes), held),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )

    def __call__(self, images: list[bytes]) -> np.ndarray:
        parts = [
            self._scores(tf.constant(images[i : i + self.batch_size])).numpy()
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
