# One image for the API and the workers. GPU workers run it with the NVIDIA runtime
# (docker-compose.yml `worker-gpu`); torch's CUDA build is what requirements pin.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY itloop ./itloop
COPY server ./server
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
COPY rigclient ./rigclient
COPY demo ./demo
COPY scripts ./scripts
RUN pip install '.[s3]'
RUN useradd --create-home itloop && mkdir -p /data && chown itloop /data
USER itloop
ENV ITLOOP_DATA_DIR=/data
EXPOSE 8000
CMD ["itloop", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
