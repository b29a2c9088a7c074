"""The most a request may ask of decoding. Plain constants: settings and options both check them."""

MAX_BEAMS = 32  # beams (or samples) of one request: the rows it occupies per decoder step
MAX_LENGTH = 64  # caption tokens
MAX_CANDIDATES = 64  # sampled captions of one request before the best are kept (rows per step)
