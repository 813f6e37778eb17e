# The hpo image: `hpo` is the entrypoint, so a compose `command:` is an hpo subcommand.
#
# With a registry (the usual case) nothing needs setting: `docker compose up -d` builds it from
# python:3.11-slim and PyPI. Without one, scripts/containers-up builds it from a local base image
# and wheels made on the host (docs/compose.md, "Real containers without a registry"):
#   docker build --build-arg BASE=local/python:3.11 --build-arg OFFLINE_WHEELS=1 -t hpo:local .
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# 1: install from docker/wheels/ only (--no-index); empty: from PyPI
ARG OFFLINE_WHEELS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY docker/wheels /wheels
COPY pyproject.toml README.md ./
COPY hpo ./hpo
RUN python -m venv /opt/hpo \
    && if [ -n "$OFFLINE_WHEELS" ]; then \
         /opt/hpo/bin/pip install --no-cache-dir --no-index --find-links /wheels . ; \
       else \
         /opt/hpo/bin/pip install --no-cache-dir . ; \
       fi

FROM ${BASE}
ENV PATH=/opt/hpo/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    MPLBACKEND=Agg
COPY --from=build /opt/hpo /opt/hpo
WORKDIR /app
COPY studies ./studies
RUN useradd --create-home --uid 10001 --user-group hpo \
    && chown hpo:hpo /app

# Non-root from here on; /app (the working directory, with studies/) is writable for reports.
USER 10001:10001
ENTRYPOINT ["hpo"]
CMD ["--help"]
