"""The serving contract between the exported models and the gateway: the one source of truth.

Pure Python on purpose: the gateway imports this module and must not pull in TensorFlow
or training code. See docs/architecture.md §2.
"""

# Special tokens and their fixed ids. The tokenizer, the models and the gateway all use
# these; changing an id invalidates every trained model.
PAD = "<pad>"
START = "<start>"
END = "<end>"
UNK = "<unk>"
SEP = "<sep>"
SPECIAL_TOKENS = (PAD, START, END, UNK, SEP)
PAD_ID, START_ID, END_ID, UNK_ID, SEP_ID = range(len(SPECIAL_TOKENS))

# Caption boxes travel as one string with this separator (e.g. the `score` signature's
# `text` input); the tokenizer turns it into SEP.
BOX_SEPARATOR = "\n"

# Model names as TF Serving knows them.
ENCODER_MODEL = "memefly_encoder"
DECODER_MODEL = "memefly_decoder"

# Both models of a deployment carry the same version number; the gateway pins the pair.
# Default TF Serving ports inside each container.
GRPC_PORT = 8500
REST_PORT = 8501

# memefly_encoder signatures.
ENCODER_BYTES_SIGNATURE = "serving_default"  # image_bytes string [N] -> FEATURES, TEMPLATE_PROBS
ENCODER_PIXELS_SIGNATURE = "pixels"  # images uint8 [N, IMAGE_SIZE, IMAGE_SIZE, 3] -> same
IMAGE_BYTES = "image_bytes"
IMAGES = "images"
FEATURES = "features"
TEMPLATE_PROBS = "template_probs"
IMAGE_SIZE = 299
FEATURE_DIM = 2048

# memefly_decoder signatures.
INIT_SIGNATURE = "init"  # template_probs [N, T] -> STATE [N, H], CONTEXT [N, C]
STEP_SIGNATURE = "serving_default"  # TOKEN int32 [N], STATE, CONTEXT -> TOP_IDS, TOP_LOG_PROBS, STATE
# The same step with STATE and CONTEXT as float16 on the wire (cast in the graph, computed in
# float32): requests half the size, replies 40% smaller (top ids and log-probs stay 4 bytes).
# Metadata WIRE_DTYPES lists what the decoder offers.
STEP_FLOAT16_SIGNATURE = "step_float16"
WIRE_DTYPES = "wire_dtypes"  # "float32" or "float32,float16" (models exported before: "")
VOCABULARY_SIGNATURE = "vocabulary"  # IDS int32 [N] -> TOKENS string [N]
TEMPLATES_SIGNATURE = (
    "templates"  # IDS int32 [N] -> NAMES string [N], BOX_COUNTS int32 [N], ALLOWED_BOX_COUNTS int32 [N]
)
# Fingerprints of the training captions (memefly.decoding.distinct.fingerprint), sorted, in rows
# of FINGERPRINT_ROW (padded with 0): IDS int32 [N] (row numbers) -> FINGERPRINTS int64 [N, FINGERPRINT_ROW].
# The gateway refuses to return a training caption verbatim. Metadata TRAINING_CAPTIONS: how many.
TRAINING_CAPTIONS_SIGNATURE = "training_captions"
FINGERPRINTS = "fingerprints"
FINGERPRINT_ROW = 512
TRAINING_CAPTIONS = "training_captions"
SCORE_SIGNATURE = "score"  # TEMPLATE_PROBS [N, T], TEXT string [N] -> LOG_PROB [N], NUM_TOKENS [N]
STATE = "state"
CONTEXT = "context"
TOKEN = "token"
TOP_IDS = "top_ids"
TOP_LOG_PROBS = "top_log_probs"
IDS = "ids"
TOKENS = "tokens"
NAMES = "names"
BOX_COUNTS = "box_counts"  # the template's typical box count
# Bit b set: a caption of b boxes is allowed (the counts at least 10% of the template's real
# memes use; one box per panel for a multi-panel layout). 0: no rule.
ALLOWED_BOX_COUNTS = "allowed_box_counts"
TEXT = "text"
LOG_PROB = "log_prob"
NUM_TOKENS = "num_tokens"
TOP_K = 64  # candidates per step on the wire; sampling and blocking happen over these

# Both models: metadata by key (no scalar inputs anywhere: TF Serving batches on dim 0).
METADATA_SIGNATURE = "metadata"  # KEYS string [N] -> VALUES string [N] ("" for an unknown key)
KEYS = "keys"
VALUES = "values"
TEMPLATE_FINGERPRINT = "template_fingerprint"  # sha256 of the ordered template names
WEIGHTS_FINGERPRINT = "weights_fingerprint"  # decoder only: sha256 of its weights
MODEL_VERSION = "model_version"
NUM_TEMPLATES = "num_templates"
# Encoder only: an image whose top template probability is below this is no known template
# (chosen at export against generated non-template images; "" in models exported before it).
KNOWN_THRESHOLD = "known_threshold"

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
