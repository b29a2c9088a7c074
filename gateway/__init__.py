"""The user-facing FastAPI service: HTTP API, decoding scheduler, model backends, rendering.

It may import `memefly.contract` but nothing from `model_export` (training code).
"""
