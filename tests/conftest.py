"""Shared test set-up. Offline: no hub access (HF_HUB_OFFLINE is read at import time)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
