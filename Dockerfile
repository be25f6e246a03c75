FROM python:3.11-slim
# Every line of the API, the worker and the webhook sender reaches `docker logs` at once.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Exactly what CI tested: requirements-lock.txt (scripts/lock), every file checked by its
# sha256. Its torch is 2.13.0+cpu, the CPU build, which PyPI does not carry: PyTorch's CPU
# index serves it, and the hash refuses any file but the one the tests ran on.
COPY requirements-lock.txt ./
RUN pip install --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements-lock.txt
# GPU workers: `--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128` (for
# example) replaces the CPU build with that index's CUDA build of the same torch release
# and its CUDA libraries, plus bitsandbytes for QLoRA (the `gpu` extra). That one step is
# outside the lock, which covers the CPU build only.
ARG TORCH_INDEX=""
RUN if [ -n "$TORCH_INDEX" ]; then \
        release=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements-lock.txt) && \
        pip install --force-reinstall --index-url "$TORCH_INDEX" "torch==$release" && \
        pip install "bitsandbytes>=0.45"; \
    fi
COPY pyproject.toml README.md ./
COPY traindepot traindepot
COPY api api
COPY worker worker
COPY db db
RUN pip install --no-deps --no-build-isolation .
ENV HF_HOME=/data/hf
