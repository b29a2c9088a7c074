# Two images from one file:
#   gateway (default, the last stage): `memefly serve` on port 8000, talking gRPC to the two
#     TF Serving containers. Small: no TensorFlow. TF Serving's Python protos import
#     TensorFlow's own protos, so a build stage extracts just those generated modules
#     (docker/slim_serving_protos.py) instead of installing TensorFlow (~2 GB).
#   export (--target export): the full project with TensorFlow, for the compose `export`
#     profile (`memefly export`) and for training in a container.

# ---- TF Serving protos without TensorFlow --------------------------------------------
FROM python:3.11-slim AS protos
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install tensorflow-serving-api==2.21.0
COPY docker/slim_serving_protos.py /tmp/
RUN python /tmp/slim_serving_protos.py /protos

# ---- the full project (TensorFlow), for export ---------------------------------------
FROM python:3.11-slim AS export-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone (with empty packages), so that editing the
# code does not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN mkdir memefly model_export gateway \
    && touch memefly/__init__.py model_export/__init__.py gateway/__init__.py \
    && pip install '.[train]' \
    && pip uninstall --yes memefly
COPY memefly memefly
COPY model_export model_export
COPY gateway gateway
RUN pip install --no-deps .

FROM python:3.11-slim AS export
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    KERAS_HOME=/cache/keras MEMEFLY_CACHE_DIR=/cache/memefly
# uid 1000 so that the export service can write into a ./models folder owned by the usual
# first user of the host. /cache holds downloaded InceptionV3 weights and the features of
# template views (a named volume in compose); world-writable so `--user` overrides work too.
RUN useradd --create-home --uid 1000 memefly \
    && mkdir -p /cache/keras /cache/memefly && chmod 1777 /cache /cache/keras /cache/memefly
COPY --from=export-build /opt/venv /opt/venv
USER memefly
WORKDIR /home/memefly
CMD ["memefly", "--help"]

# ---- the gateway (default target) -----------------------------------------------------
FROM python:3.11-slim AS gateway-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/gateway-requirements.txt ./
RUN pip install -r gateway-requirements.txt
COPY pyproject.toml README.md ./
COPY memefly memefly
COPY model_export model_export
COPY gateway gateway
# --no-deps: the project's own list would pull TensorFlow in; the gateway never imports it.
RUN pip install --no-deps .
COPY --from=protos /protos /opt/venv/lib/python3.11/site-packages/
# The search step's kernels (numba), compiled here into the image instead of at every
# container's start (about 7 s of CPU), for any x86-64 CPU (generic: numba's cache is keyed by
# the CPU it compiled for, and a container's own writes are lost when it stops).
ENV NUMBA_CACHE_DIR=/opt/numba-cache NUMBA_CPU_NAME=generic
RUN python -c "from memefly.decoding.captioner import compile_kernels; compile_kernels()"

FROM python:3.11-slim AS gateway
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache NUMBA_CPU_NAME=generic
# The meme font (Roboto Condensed Bold, Apache-2.0) comes from Debian, not from the repository.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-roboto-unhinted \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 memefly \
    && mkdir /data && chown memefly /data
# What the gateway keeps between runs (the URL secret, uploads behind shared URLs): compose
# mounts a volume here, so that restarts and replicas share them.
ENV MEMEFLY_DATA_DIR=/data
COPY --from=gateway-build /opt/venv /opt/venv
COPY --from=gateway-build --chown=memefly /opt/numba-cache /opt/numba-cache
USER memefly
WORKDIR /home/memefly
EXPOSE 8000
CMD ["memefly", "serve", "--host", "0.0.0.0", "--port", "8000"]
