# Inference-service images for PyTorch models; one target per variant (docs/architecture.md):
#   pytorch-cpu      TorchScript run by torch (CPU wheel)                     BACKEND=torchscript
#   pytorch-cpp-cpu  the C++ runtime wheel slipway-runtime, no torch package  BACKEND=cpp
#   pytorch-gpu      TorchScript run by torch with CUDA from PyPI's wheels    BACKEND=torchscript, build with DEVICE=gpu
#   onnx-cpu         ONNX Runtime, no torch                                   BACKEND=onnx
# The build context is staged by `slipway images`: serving/ model_export/ requirements*.txt
# (Slipway's, plus requirements-project.txt: the project's own, installed on top)
# model/ (the model's export folder) wheelhouse/ (local wheels, installed before any index).
# No syntax directive: the classic builder (docker SDK) and BuildKit must both build this file.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# The shared builder: /opt/venv with the service's requirements. Each variant's builder adds its
# runtime; only /opt/venv reaches a final image.
FROM ${BASE_IMAGE} AS venv
# Index arguments are read by pip from the environment; they are never written into a final image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY requirements.txt requirements-pytorch.txt /requirements/
COPY wheelhouse/ /wheelhouse/
# setuptools is only seeded by venv (a framework that needs it installs it again); numpy's own test
# suite is never run in a service image.
RUN pip install --find-links /wheelhouse -r /requirements/requirements.txt \
    && pip uninstall --yes setuptools \
    && find /opt/venv/lib -path '*/site-packages/numpy/*' -type d -name tests -prune -exec rm -rf {} +
# The project's own requirements (its requirements.txt beside release.toml, staged as
# requirements-project.txt; comments only when it has none) go on top of the service's, constrained
# by the service's pins: they add packages and never replace the service's. A conflict fails here
# with pip's message, and the marker line lets `slipway images` name the project's file. Copied
# after the service's layer, so a change of the project's file reuses that layer.
COPY requirements-project.txt /requirements/
RUN if grep -qvE '^[[:space:]]*(#|$)' /requirements/requirements-project.txt; then \
        pip install --find-links /wheelhouse -c /requirements/requirements.txt \
            -c /requirements/requirements-pytorch.txt -r /requirements/requirements-project.txt \
        || { echo "SLIPWAY-PROJECT-REQUIREMENTS-FAILED: the project's requirements.txt conflicts with the service's pins" >&2; exit 1; }; \
    fi

# ---------------------------------------------------------------------------------------------
# What every final image shares: the base, a non-root user, the service's environment.
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 slipway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin slipway
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    MODEL_DIR=/model \
    HOST=0.0.0.0 \
    PORT=8080
# SLIPWAY_SLOTS x SLIPWAY_THREADS: chosen by the service from the CPUs the container gets, unless set.
WORKDIR /app
EXPOSE 8080
# /readyz, not /healthz: healthy means the model is loaded, warmed up and answering.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
USER 10001:10001
CMD ["python", "-m", "serving"]
LABEL org.opencontainers.image.title="slipway-serving" \
      org.opencontainers.image.description="Slipway inference service" \
      org.opencontainers.image.licenses="Apache-2.0"

# ---------------------------------------------------------------------------------------------
# The model's files, owned by root and readable (not writable) by the service user.
FROM ${BASE_IMAGE} AS model-files
COPY model/ /model/
RUN chmod -R a+rX,go-w /model

# ---------------------------------------------------------------------------------------------
# Variants. Order inside each final stage: venv, code, model (its own layer, last, so a new model
# reuses every layer below it), then the labels of this build. The model is read-only for the
# service: owned by root, readable by everyone. It comes from the model-files stage, because an
# export folder written atomically may be mode 0700, which the service user could not read
# (COPY --chmod would need BuildKit); COPY --from keeps the modes set there.
# Stage order matters for the classic builder, which builds every stage above the target (BuildKit
# builds only what the target needs): cheap variants come first, and pytorch-cpp-cpu, whose
# builder fails without the C++ wheel in the wheelhouse, comes last.

FROM venv AS venv-onnx
RUN pip install --find-links /wheelhouse -c /requirements/requirements-pytorch.txt onnxruntime \
    && pip uninstall --yes pip

FROM runtime AS onnx-cpu
COPY --from=venv-onnx /opt/venv /opt/venv
COPY serving/ /app/serving/
COPY model_export/ /app/model_export/
ENV BACKEND=onnx DEVICE=cpu
COPY --from=model-files /model /model
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.source="$SOURCE" org.opencontainers.image.created="$CREATED" \
      dev.slipway.variant="onnx-cpu"

FROM venv AS venv-torch
ARG DEVICE=cpu
# CPU: the torch CPU wheel from the wheelhouse (or the CPU index in PIP_EXTRA_INDEX_URL).
# GPU: PyPI's torch, which brings CUDA as nvidia-* wheels; the wheelhouse is skipped because its
# local-version CPU wheel (2.13.0+cpu) would satisfy torch==2.13.0 and win.
RUN if [ "$DEVICE" = "gpu" ]; then \
        pip install -c /requirements/requirements-pytorch.txt torch \
        && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'DEVICE=gpu but a CPU-only torch was installed')"; \
    elif [ "$DEVICE" = "cpu" ]; then \
        pip install --find-links /wheelhouse -c /requirements/requirements-pytorch.txt torch; \
    else \
        echo "DEVICE must be cpu or gpu, not '$DEVICE'" >&2; exit 1; \
    fi \
    && pip uninstall --yes pip

FROM runtime AS pytorch-cpu
COPY --from=venv-torch /opt/venv /opt/venv
COPY serving/ /app/serving/
COPY model_export/ /app/model_export/
ENV BACKEND=torchscript DEVICE=cpu
COPY --from=model-files /model /model
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.source="$SOURCE" org.opencontainers.image.created="$CREATED" \
      dev.slipway.variant="pytorch-cpu"

FROM runtime AS pytorch-gpu
COPY --from=venv-torch /opt/venv /opt/venv
COPY serving/ /app/serving/
COPY model_export/ /app/model_export/
ENV BACKEND=torchscript DEVICE=gpu
COPY --from=model-files /model /model
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.source="$SOURCE" org.opencontainers.image.created="$CREATED" \
      dev.slipway.variant="pytorch-gpu"

FROM venv AS venv-cpp
# The C++ runtime comes only from the wheelhouse: a package of the same name on an index is never
# taken in its place. Unpinned because the wheelhouse holds exactly the wheel this release built.
# numpy goes too (about 56 MB with its BLAS): the cpp backend hands the runtime a PIL image's
# bytes, and the runtime needs numpy only for the calls that return arrays.
# hadolint ignore=DL3013
RUN pip install --no-index --find-links /wheelhouse slipway-runtime \
    && pip uninstall --yes pip numpy \
    && python -c "import sys, slipway_runtime; sys.exit(sorted({'torch', 'numpy'} & set(sys.modules)) or 0)"

FROM runtime AS pytorch-cpp-cpu
COPY --from=venv-cpp /opt/venv /opt/venv
COPY serving/ /app/serving/
COPY model_export/ /app/model_export/
ENV BACKEND=cpp DEVICE=cpu
COPY --from=model-files /model /model
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.source="$SOURCE" org.opencontainers.image.created="$CREATED" \
      dev.slipway.variant="pytorch-cpp-cpu"
