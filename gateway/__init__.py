"""The user-facing service: HTTP API (api/), serving engine (engine/), model backends
(backends/), rendering, shareable image URLs, and the same pipeline as a library (pipeline.py).

It stands on the core (`memefly`, not its `cli`) and never imports `model_export` (training
code): tests/test_layering.py.
"""
