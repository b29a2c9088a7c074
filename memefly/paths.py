"""Where things live by default. Every path here can be overridden by an environment variable."""

import os
from pathlib import Path

from memefly import contract as c

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """Where models, prepared data, runs and downloads go by default: the project folder in a
    source checkout (where `make` runs), else the user's data folder (`pip install memefly`
    must never write into site-packages)."""
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT
    return data_dir()


def dataset_dir() -> Path:
    """The ImgFlip575K copy: $MEMEFLY_DATASET_DIR, else ../shared/datasets/imgflip575k beside the project
    (installed from a wheel: datasets/imgflip575k in the data folder)."""
    env = os.environ.get("MEMEFLY_DATASET_DIR")
    if env:
        return Path(env).expanduser()
    if home() != PROJECT_ROOT:
        return data_dir() / "datasets" / "imgflip575k"
    return (PROJECT_ROOT / ".." / "shared" / "datasets" / "imgflip575k").resolve()


def prepared_dir() -> Path:
    """Output of `memefly data prepare`: $MEMEFLY_PREPARED_DIR, else data/prepared in home()."""
    return Path(os.environ.get("MEMEFLY_PREPARED_DIR", home() / "data" / "prepared")).expanduser()


def runs_dir() -> Path:
    """Parent of training runs: $MEMEFLY_RUNS_DIR, else runs/ in home()."""
    return Path(os.environ.get("MEMEFLY_RUNS_DIR", home() / "runs")).expanduser()


def models_dir() -> Path:
    """Root of the exported models (ROOT/memefly_encoder/<v>/...): $MEMEFLY_MODELS_DIR, else models/ in home()."""
    return Path(os.environ.get("MEMEFLY_MODELS_DIR", home() / "models")).expanduser()


def templates_dir() -> Path:
    """Blank template images (<Name>.jpg|png) to read: $MEMEFLY_TEMPLATES_DIR, else the
    dataset's dataset/templates/img when it is there, else where downloads go."""
    in_dataset = dataset_dir() / "dataset" / "templates" / "img"
    if os.environ.get("MEMEFLY_TEMPLATES_DIR") or not in_dataset.is_dir():
        return templates_download_dir()
    return in_dataset


def templates_download_dir() -> Path:
    """Where `memefly data download` writes: $MEMEFLY_TEMPLATES_DIR, else data/templates in home()
    (never into the dataset copy)."""
    env = os.environ.get("MEMEFLY_TEMPLATES_DIR")
    return Path(env).expanduser() if env else home() / "data" / "templates"


# Where `memefly data download` fetches template images from: the public ImgFlip575K repository.
DEFAULT_TEMPLATES_URL = "https://raw.githubusercontent.com/schesa/ImgFlip575K_Dataset/master/dataset/templates/img/"


def templates_url() -> str:
    """$MEMEFLY_TEMPLATES_URL, else the public ImgFlip575K repository's template folder."""
    return os.environ.get("MEMEFLY_TEMPLATES_URL", DEFAULT_TEMPLATES_URL)


def data_dir() -> Path:
    """What the gateway keeps between runs (uploads behind shared image URLs, their URL secret):
    $MEMEFLY_DATA_DIR, else the user's data folder (~/.local/share/memefly on Linux)."""
    env = os.environ.get("MEMEFLY_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("memefly", appauthor=False))


def cache_dir() -> Path:
    """Export's feature cache: $MEMEFLY_CACHE_DIR, else ~/.cache/memefly."""
    return Path(os.environ.get("MEMEFLY_CACHE_DIR", Path.home() / ".cache" / "memefly")).expanduser()


def shipped_model() -> Path:
    """The default trained decoder shipped in the package (`memefly export --default-model`)."""
    return PROJECT_ROOT / "model_export" / "trained" / "default"


def decoder_run() -> Path:
    """The trained decoder that `memefly serve` builds its models from when none are exported:
    $MEMEFLY_DECODER_RUN, else the default model shipped in the package."""
    env = os.environ.get("MEMEFLY_DECODER_RUN")
    return Path(env).expanduser() if env else shipped_model()


def encoder_weights() -> str:
    """InceptionV3 weights for builds: $MEMEFLY_ENCODER_WEIGHTS (`imagenet`, a file, or `random`)."""
    return os.environ.get("MEMEFLY_ENCODER_WEIGHTS", "imagenet")


def exported_versions(models_dir: Path, model: str) -> set[int]:
    """Versions of MODEL under MODELS_DIR, as TF Serving sees them: numeric folders with a saved_model.pb."""
    folder = Path(models_dir) / model
    if not folder.is_dir():
        return set()
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists()}


def exported_pairs(models_dir: Path) -> set[int]:
    """Versions that both models have: the pairs a gateway can serve."""
    return exported_versions(models_dir, c.ENCODER_MODEL) & exported_versions(models_dir, c.DECODER_MODEL)
