"""The serving engine: the meme service, the decoding scheduler and batcher, admission, the
conditioning cache, the served models' metadata. Knows nothing of HTTP."""
