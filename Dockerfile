# syntax=docker/dockerfile:1
# lstm-serve images. One build stage, two runtimes, one serving stage on top of the chosen runtime:
#   docker build -t lstm-serve:gpu .                          # default: onnxruntime-gpu on CUDA 13 + cuDNN 9
#   docker build -t lstm-serve:cpu --build-arg FLAVOUR=cpu .  # plain onnxruntime on slim Python, no CUDA at all
# Neither image contains torch, tests, data or training code's dependencies: the serving install only.

# onnxruntime-gpu 1.31 is built against CUDA 13 and cuDNN 9; the cuDNN *runtime* flavour carries the
# shared libraries the CUDA execution provider loads (cudart, cublas, cufft, curand, cudnn) without the
# compilers of the -devel flavour.
ARG CUDA_BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON_BASE=python:3.12-slim-bookworm
ARG ORT_GPU_VERSION=1.31.*
ARG FLAVOUR=gpu

# ---- build: the project wheel and the GPU image's requirement list ------------------------------------
FROM ${PYTHON_BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lstm_core ./lstm_core
COPY lstm_serve ./lstm_serve
COPY service ./service
COPY models ./models
COPY export ./export
COPY bench ./bench
COPY deploy/serving_requirements.py ./deploy/serving_requirements.py
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && python deploy/serving_requirements.py pyproject.toml --drop onnxruntime --extra gpu > /dist/requirements-gpu.txt

# ---- runtime-cpu: plain onnxruntime (from pyproject dependencies) on slim Python -----------------------
FROM ${PYTHON_BASE} AS runtime-cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    --mount=type=bind,source=deploy/verify_serving_env.py,target=/tmp/verify_serving_env.py \
    python -m venv /opt/venv \
 && pip install /dist/lstm_serve-*.whl \
 && python /tmp/verify_serving_env.py --onnxruntime onnxruntime --provider CPUExecutionProvider \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin lstm
ENV LSTM_SERVE_PROVIDER=cpu

# ---- runtime-gpu (default): onnxruntime-gpu instead of onnxruntime on the CUDA 13 + cuDNN 9 runtime -
FROM ${CUDA_BASE} AS runtime-gpu
ARG ORT_GPU_VERSION
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Ubuntu's python3 of the base's release; exact apt pins would break on every security update of the base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The project wheel goes in with --no-deps and its dependencies from the filtered list (serving deps without
# onnxruntime, plus the `gpu` extra: onnxruntime-gpu and NVML), so the CPU onnxruntime wheel is never installed
# next to onnxruntime-gpu (same module; removing one breaks the other). The constraint pins the CUDA 13 build.
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    --mount=type=bind,source=deploy/verify_serving_env.py,target=/tmp/verify_serving_env.py \
    python3 -m venv /opt/venv \
 && printf 'onnxruntime-gpu==%s\n' "${ORT_GPU_VERSION}" > /tmp/onnxruntime-gpu.txt \
 && pip install -r /dist/requirements-gpu.txt --constraint /tmp/onnxruntime-gpu.txt \
 && pip install --no-deps /dist/lstm_serve-*.whl \
 && python /tmp/verify_serving_env.py --onnxruntime onnxruntime-gpu --provider CUDAExecutionProvider
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin lstm
# auto = CUDA when the GPU answers; docker-compose.yml asks for cuda explicitly (fail rather than fall back).
ENV LSTM_SERVE_PROVIDER=auto \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ---- serving (final): the same layout, user, port, probe and command on either runtime ----------------
# hadolint ignore=DL3006
FROM runtime-${FLAVOUR} AS serving
WORKDIR /app
COPY model_repository ./model_repository
COPY deploy/healthcheck.py ./healthcheck.py
ENV LSTM_SERVE_HOST=0.0.0.0 \
    LSTM_SERVE_PORT=8000 \
    LSTM_SERVE_MODEL_REPOSITORY=/app/model_repository
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["lstm-serve"]
CMD ["serve"]
