# Modelwire server image, for GPU and CPU hosts alike. Build: docker build -t modelwire .
# Python 3.11, as the README and pyproject.toml say. No CUDA base image is needed: the
# torch wheels PyPI serves for Linux bring their own CUDA libraries, so a GPU host only
# needs its NVIDIA driver and the NVIDIA container toolkit (which mounts the driver in).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HOME=/cache/huggingface \
    MODELWIRE_CACHE=/cache/modelwire \
    MODELWIRE_HOST=0.0.0.0 \
    MODELWIRE_PORT=50051

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/modelwire
ENV PATH=/opt/modelwire/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip install '.[server]'

# Everything the server writes goes under /cache (hub downloads, built presets) and
# /tmp, so the root file system can be mounted read-only (docker-compose.yml and the
# Kubernetes manifests do).
RUN useradd --create-home --uid 10001 modelwire \
    && mkdir -p /cache /config \
    && chown -R modelwire:modelwire /cache
USER 10001:10001
WORKDIR /home/modelwire
VOLUME ["/cache"]
# gRPC; Prometheus metrics when MODELWIRE_METRICS_PORT=9464 (docker-compose.yml sets it).
EXPOSE 50051 9464

HEALTHCHECK --interval=15s --timeout=6s --start-period=120s --retries=3 \
    CMD ["modelwire-server", "healthcheck", "--target", "127.0.0.1:50051"]

# With no config this serves the offline tiny preset; mount one at /config/models.yaml
# and set MODELWIRE_CONFIG=/config/models.yaml (docker-compose.yml does) for real models.
ENTRYPOINT ["modelwire-server"]
CMD ["serve"]
