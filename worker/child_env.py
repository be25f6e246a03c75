"""The training child's environment: an allowlist, not the worker's whole environment.

The worker may hold operator secrets (cloud credentials, API keys, tokens of other
services) that a training job has no use for; a job runs user-chosen code paths, so it gets
only what it needs: the system basics, Python's, the ML libraries' and the accelerators'
variables, and the traindepot settings the child reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from traindepot.settings import Settings

__all__ = ["child_environment", "training_environment"]

_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
        "TEMP", "TMP", "TERM", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "SSL_CERT_FILE",
        "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
        "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "OMP_NUM_THREADS",
        "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
        "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
    }
)  # fmt: skip
# Python's own, the Hugging Face libraries' (cache, offline mode; HF_TOKEN for gated Hub
# models is one the operator gives workers on purpose), torch's and the accelerators'.
_PREFIXES = (
    "LC_", "PYTHON", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DATASETS_", "TORCH",
    "PYTORCH_", "CUDA_", "NVIDIA_", "NCCL_", "ROCM_", "HIP_", "ACCELERATE_",
)  # fmt: skip
# The settings the training child reads (traindepot/settings.py): the stores, its paths,
# the flusher's and the limits it checks again.
_SETTINGS = frozenset(
    {
        "TRAINDEPOT_DATABASE_URL", "TRAINDEPOT_REDIS_URL", "TRAINDEPOT_HOME",
        "TRAINDEPOT_ALLOWED_PATHS", "TRAINDEPOT_FLUSH_INTERVAL_SECONDS",
        "TRAINDEPOT_FLUSH_QUEUE_SIZE", "TRAINDEPOT_FLUSH_LEADING_EDGE", "TRAINDEPOT_GC_FREEZE",
        "TRAINDEPOT_ALLOW_PICKLE_WEIGHTS",
        "TRAINDEPOT_ALLOW_TRUST_REMOTE_CODE", "TRAINDEPOT_MAX_DATASET_FILE_BYTES",
        "TRAINDEPOT_MAX_DATASET_ROWS",
        "TRAINDEPOT_DB_POOL_SIZE", "TRAINDEPOT_DB_MAX_OVERFLOW",
        "TRAINDEPOT_DB_POOL_TIMEOUT_SECONDS", "TRAINDEPOT_DATASET_CACHE_MIB",
        # Whether there is a store (the child hands its checkpoints over); the store's
        # credentials stay with the worker, which uploads (worker/uploads.py).
        "TRAINDEPOT_ARTIFACTS_URL",
    }
)  # fmt: skip


def allowed(name: str, extra: Iterable[str] = ()) -> bool:
    return name in _NAMES or name in _SETTINGS or name.startswith(_PREFIXES) or name in extra


def child_environment(
    environ: Mapping[str, str], overrides: Mapping[str, str], extra: Iterable[str] = ()
) -> dict[str, str]:
    """The allowed part of `environ` (plus the names in `extra`), then `overrides`."""
    names = frozenset(extra)
    return {
        **{k: v for k, v in environ.items() if allowed(k, names)},
        **overrides,
    }


def training_environment(settings: Settings) -> dict[str, str]:
    """The training child's environment (cold, or the template process a warm child is
    forked from): the worker's, allowlisted, with the paths it resolved against its own
    directory made absolute (the child, started elsewhere, reads its settings from it)."""
    overrides = {
        "PYTHONUNBUFFERED": "1",
        "TRAINDEPOT_HOME": str(settings.home.resolve()),
        "TRAINDEPOT_ALLOWED_PATHS": ",".join(map(str, settings.allowed_paths)),
    }
    # An allowlist: no operator secret the training does not use.
    return child_environment(os.environ, overrides, settings.child_env_allow)
