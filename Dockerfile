# Modelwire server on a CUDA host. Build: docker build -t modelwire .
# The CUDA runtime comes from the base image; torch's CUDA wheels bring their own
# CUDA libraries too, so only the host's NVIDIA driver (container toolkit) is needed.
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    MODELWIRE_CACHE=/cache/modelwire \
    MODELWIRE_HOST=0.0.0.0 \
    MODELWIRE_PORT=50051

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/modelwire
ENV PATH=/opt/modelwire/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip install '.[server]'

RUN useradd --create-home --uid 10001 modelwire \
    && mkdir -p /cache /config \
    && chown -R modelwire:modelwire /cache
USER 10001:10001
WORKDIR /home/modelwire
VOLUME ["/cache"]
EXPOSE 50051

HEALTHCHECK --interval=15s --timeout=6s --start-period=120s --retries=3 \
    CMD ["modelwire-server", "healthcheck", "--target", "127.0.0.1:50051"]

# With no config this serves the offline tiny preset; mount one at /config/models.yaml
# and set MODELWIRE_CONFIG=/config/models.yaml (docker-compose.yml does) for real models.
ENTRYPOINT ["modelwire-server"]
CMD ["serve"]
