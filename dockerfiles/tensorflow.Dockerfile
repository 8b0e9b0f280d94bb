# Inference-service images for TensorFlow models; one target per variant (docs/architecture.md):
#   tensorflow-cpu    the SavedModel run by tensorflow-cpu in the service          BACKEND=tensorflow
#   tensorflow-gpu    the same with tensorflow[and-cuda] (build with DEVICE=gpu)    BACKEND=tensorflow
#   tfserving-client  no TensorFlow: the service calls an external TF Serving       BACKEND=tfserving
#                     over REST at TFSERVING_URL; only model.json is in the image
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
COPY requirements.txt requirements-tensorflow.txt /requirements/
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
            -c /requirements/requirements-tensorflow.txt -r /requirements/requirements-project.txt \
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
    PORT=8080 \
    TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /app
EXPOSE 8080
# /readyz, not /healthz: healthy means the model is loaded, warmed up and answering (for
# tfserving-client: the external server answers for this model).
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
# builds only what the target needs): tfserving-client first, so it never installs TensorFlow.

FROM venv AS venv-client
# The tfserving-client image has a size budget (< 200 MB): numpy (about 60 MB with its BLAS) is
# not needed by the tfserving backend, which forwards pixels from PIL as JSON.
RUN pip uninstall --yes pip numpy

FROM runtime AS tfserving-client
COPY --from=venv-client /opt/venv /opt/venv
COPY serving/ /app/serving/
# The external server holds the SavedModel; the service needs only the manifest (name, labels).
# TFSERVING_URL's default suits host networking with TF Serving's REST port on the same host.
ENV BACKEND=tfserving DEVICE=cpu TFSERVING_URL=http://127.0.0.1:8501
COPY --from=model-files /model/model.json /model/model.json
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.source="$SOURCE" org.opencontainers.image.created="$CREATED" \
      dev.slipway.variant="tfserving-client"

FROM venv AS venv-tensorflow
ARG DEVICE=cpu
# GPU: tensorflow with its CUDA extra (CUDA from PyPI's nvidia-* wheels, not from the base image),
# at the version requirements-tensorflow.txt pins for tensorflow-cpu, so both images run one TF.
RUN if [ "$DEVICE" = "gpu" ]; then \
        version="$(sed -n 's/^tensorflow-cpu==\([^ ;#]*\).*/\1/p' /requirements/requirements-tensorflow.txt)" \
        && [ -n "$version" ] \
        && pip install --find-links /wheelhouse "tensorflow[and-cuda]==$version"; \
    elif [ "$DEVICE" = "cpu" ]; then \
        pip install --find-links /wheelhouse -r /requirements/requirements-tensorflow.txt; \
    else \
        echo "DEVICE must be cpu or gpu, not '$DEVICE'" >&2; exit 1; \
    fi \
    && pip uninstall --yes pip

FROM runtime AS tensorflow-cpu
COPY --from=venv-tensorflow /opt/venv /opt/venv
COPY serving/ /app/serving/
COPY model_export/ /app/model_export/
ENV BACKEND=tensorflow DEVICE=cpu
COPY --from=model-files /model /model
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.source="$SOURCE" org.opencontainers.image.created="$CREATED" \
      dev.slipway.variant="tensorflow-cpu"

FROM runtime AS tensorflow-gpu
COPY --from=venv-tensorflow /opt/venv /opt/venv
COPY serving/ /app/serving/
COPY model_export/ /app/model_export/
ENV BACKEND=tensorflow DEVICE=gpu
COPY --from=model-files /model /model
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.source="$SOURCE" org.opencontainers.image.created="$CREATED" \
      dev.slipway.variant="tensorflow-gpu"
