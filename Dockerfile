# The sortflow pipeline image: what the compose stack's servers and worker run, and what a docker or
# kubernetes work pool starts for each flow run (`sortflow deploy --work-pool POOL --image IMAGE`).
# Build from a clean checkout: docker build -t registry.example.com/sortflow:1.0 .
# The git history is copied on purpose: DVC pulls data by the checkout's .dvc files, and MLflow tags
# every run with the commit.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MPLBACKEND=Agg

# git for DVC and MLflow's commit tag; Debian's current release of each (see .hadolint.yaml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 sortflow
WORKDIR /opt/sortflow

# Dependencies first, so that a code change does not reinstall torch. Their versions are the ranges of
# pyproject.toml, as for `make install`. uv installs them in about a third of pip's time (it downloads in
# parallel); --system-certs trusts the system's CA store, as pip does, for networks that re-sign TLS.
COPY pyproject.toml README.md ./
COPY components/__init__.py components/__init__.py
COPY flows/__init__.py flows/__init__.py
# hadolint ignore=DL3013
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv pip install --system --system-certs --no-cache --compile-bytecode ".[team]" \
    && pip uninstall --yes uv

COPY --chown=1000:1000 . .
# The runs write output/, triton_repo/ and DVC's data/ and .dvc/tmp here, as user 1000; these folders and the
# MLflow server's artifact folder (compose.yaml) exist so that volumes mounted on them start with that owner.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && mkdir -p output triton_repo /var/lib/mlflow \
    && chown 1000:1000 /opt/sortflow output triton_repo /var/lib/mlflow \
    && git config --system --add safe.directory /opt/sortflow

USER 1000
# Workers and servers are started with their own command (compose.yaml, deploy/kubernetes/).
CMD ["sortflow", "--help"]
