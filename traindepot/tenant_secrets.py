"""Tenant secrets: encrypted at rest, given in clear only to a training child of that
tenant's jobs (docs/architecture.md, "Hub sync").

The only secret today is `hf_token`, the tenant's Hugging Face token, set with
`PUT /tenants/{t}/secrets/hf_token`. The database holds it encrypted with Fernet
(cryptography's authenticated encryption: AES-CBC and HMAC-SHA256) under the server's
secrets key: `TRAINDEPOT_SECRETS_KEY` (a Fernet key, the same for every API process and
worker), or the one kept in `home/secrets_key` (mode 0600, created once) on a single
machine. No answer of the API, no log line, no webhook and no spec ever holds the value;
the worker decrypts it only to put it in the environment of that job's training child
(`HF_TOKEN`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from traindepot.apikeys import write_private
from traindepot.settings import Settings

HF_TOKEN = "hf_token"
NAMES = frozenset({HF_TOKEN})
MAX_BYTES = 4096

__all__ = ["HF_TOKEN", "NAMES", "InvalidToken", "decrypt", "encrypt"]


def _fernet(settings: Settings) -> Fernet:
    if settings.secrets_key:
        return Fernet(settings.secrets_key.encode())
    return Fernet(_key_in(settings.home))


@lru_cache(maxsize=8)
def _key_in(home: Path) -> bytes:
    path = home / "secrets_key"
    if not path.exists():
        write_private(path, Fernet.generate_key(), replace=False)
    return path.read_bytes().strip()


def encrypt(settings: Settings, value: str) -> bytes:
    return _fernet(settings).encrypt(value.encode())


def decrypt(settings: Settings, ciphertext: bytes) -> str:
    """The value; `InvalidToken` when it was encrypted under another key."""
    return _fernet(settings).decrypt(ciphertext).decode()
