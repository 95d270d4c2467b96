# syntax=docker/dockerfile:1
# Two targets from one file:
#   serve (default): the API. Only the base dependencies: numpy scoring, mlflow-skinny to load champions.
#   train:           adds implicit, lightfm, pandas and scikit-learn for `recsvc train`.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OPENBLAS_NUM_THREADS=1 MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
WORKDIR /app
RUN useradd --create-home --uid 10001 recsvc
COPY pyproject.toml README.md ./
COPY features ./features
COPY recsvc ./recsvc
COPY training ./training

FROM base AS train
# lightfm-next compiles with -march=native unless told otherwise; the image must run on any x86-64 host.
ENV LIGHTFM_NO_CFLAGS=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ libgomp1 \
    && pip install ".[train]" \
    && apt-get purge -y gcc g++ && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
COPY data ./data
USER recsvc
ENTRYPOINT ["recsvc", "train"]
CMD ["all"]

FROM base AS serve
RUN pip install . && mkdir -p /app/var/data /app/mlruns && chown -R recsvc /app/var /app/mlruns
USER recsvc
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
ENTRYPOINT ["recsvc", "serve", "--host", "0.0.0.0", "--port", "8000"]
