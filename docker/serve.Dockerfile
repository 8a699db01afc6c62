# syntax=docker/dockerfile:1
#
# tunery serving image: the MLflow scoring server for a registered tunery classifier, on CPU.
#
#   docker build -f docker/serve.Dockerfile -t tunery-serve .
#   docker run --rm -p 8080:8080 \
#       -e MLFLOW_TRACKING_URI=http://mlflow.internal:5000 \
#       -e MODEL_URI=models:/helpdesk-router@champion \
#       tunery-serve
#
# Environment:
#   MODEL_URI            required. The model to serve, as MLflow accepts it: models:/<name>@<alias>,
#                        models:/<name>/<version>, runs:/<run_id>/model, or a path inside the container.
#                        The container exits at once with an error naming MODEL_URI when it is unset.
#   MLFLOW_TRACKING_URI  the tracking/registry server that models:/ and runs:/ URIs are resolved against.
#                        Empty by default, which MLflow treats as unset (its local default store), so
#                        set it for anything but a path URI.
# Extra arguments to `docker run IMAGE ...` are passed on to `mlflow models serve` (e.g. --workers 2).
#
# Build args:
#   TORCH_SPEC       the torch requirement, installed first and on its own   (default torch==2.13.0)
#   TORCH_INDEX_URL  the PyTorch wheel index; the CPU one keeps CUDA out      (default .../whl/cpu)
#   VERSION, VCS_REF, BUILD_DATE   fill the OCI labels
#
# The image holds no model: the registered pyfunc carries its weights and tokenizer, and imports `tunery`
# (tunery.pyfunc), which is why the project is installed here. --env-manager local serves it with this
# image's Python environment instead of building a new one at start-up.
FROM python:3.11.14-slim-bookworm

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="tunery-serve" \
      org.opencontainers.image.description="tunery: MLflow scoring server for registered tunery models (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_TRACKING_URI=""
# DL3064 (sensitive data in ENV) fires on the substring TOKEN; this is the tokenizers fork switch, no secret.
# hadolint ignore=DL3064
ENV TOKENIZERS_PARALLELISM=false

RUN python -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir pip==26.3

# 1. torch, first and on its own: the CPU build (no CUDA libraries in a serving image).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# DL3013 (pin pip versions) cannot see through the ARG: TORCH_SPEC defaults to an exact pin (torch==2.13.0).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

WORKDIR /opt/tunery

# 2. The project's dependencies, from pyproject.toml + the constraints only (cached across source edits).
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c requirements/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && pip check

# 3. The project itself (the pyfunc imports tunery). Only the library and the packages pyproject lists.
COPY README.md ./
COPY tunery/ tunery/
COPY tasks/ tasks/
COPY flows/ flows/
RUN pip install --no-cache-dir -c requirements/constraints.txt . \
    && rm -rf build ./*.egg-info \
    && python -c "import tunery.pyfunc"

RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash tunery
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/tunery

EXPOSE 8080

# The scoring server answers GET /ping with 200 once the model is loaded; urlopen raises (exit 1) otherwise.
# The long start period covers downloading the model from the registry and loading it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=5)"]

# tunery's server: MLflow's scoring app behind request-size, row and time limits (tunery serve runs the
# same). sh -c so that ${MODEL_URI:?...} can refuse to start without a model; "$@" passes docker run's
# extra arguments on (e.g. --workers 2 --max-rows 5000; "tunery-serve" is only $0, the name in errors).
ENTRYPOINT ["/bin/sh", "-c", "exec python -m tunery.serving.server \"${MODEL_URI:?MODEL_URI is not set: pass -e MODEL_URI=models:/<name>@<alias> (see docker/README.md)}\" --host 0.0.0.0 --port 8080 \"$@\"", "tunery-serve"]
