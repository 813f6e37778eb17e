# The hpo image: `hpo` is the entrypoint, so a compose `command:` is an hpo subcommand.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    MPLBACKEND=Agg

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY studies ./studies
RUN pip install --no-cache-dir . \
    && rm -rf build hpo.egg-info \
    && useradd --create-home --uid 10001 --user-group hpo \
    && chown hpo:hpo /app

# Non-root from here on; /app (the working directory, with studies/) is writable for reports.
USER hpo
ENTRYPOINT ["hpo"]
CMD ["--help"]
