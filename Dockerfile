FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY traindepot traindepot
COPY api api
COPY worker worker
COPY db db
# torch from PyPI (CUDA build on x86_64); the workers need it, the API imports it lazily.
RUN pip install --no-cache-dir .
ENV HF_HOME=/data/hf
