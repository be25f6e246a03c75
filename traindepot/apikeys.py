"""API keys: how they look, how they are hashed, where the local CLI finds one.

A key is `td_<prefix>_<secret>`: the prefix (8 hex digits) is stored in clear and shown in
lists, so a key found in a log or a repository can be identified and revoked; the secret is
32 random bytes. The database keeps only HMAC-SHA256(server secret, key): a random 256-bit
token cannot be guessed from its hash, so a fast keyed hash is enough (a slow password hash
would cost every request milliseconds for nothing), and a copy of the table alone is useless
without the server's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from traindepot.settings import Settings

PREFIX = "td"
_KEY = re.compile(r"^td_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
TENANT_RULE = "1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once, never stored
    prefix: str  # `td_<8 hex>`, stored and shown


def generate() -> NewKey:
    prefix = f"{PREFIX}_{secrets.token_hex(4)}"
    return NewKey(key=f"{prefix}_{secrets.token_urlsafe(32)}", prefix=prefix)


def well_formed(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def digest(key: str, secret: bytes) -> bytes:
    return hmac.new(secret, key.encode(), hashlib.sha256).digest()


def write_private(path: Path, data: bytes, *, replace: bool) -> bool:
    """Make `path` hold `data`, mode 0600 from the start, appearing whole (written aside,
    then linked or renamed into place). Without `replace`, an existing file wins: False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    try:
        if replace:
            os.replace(aside, path)
            return True
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)


def server_secret(settings: Settings) -> bytes:
    """`TRAINDEPOT_SECRET_KEY`, or the one kept in `home/secret_key` (created once)."""
    if settings.secret_key:
        return settings.secret_key.encode()
    return _secret_in(settings.home)


@lru_cache(maxsize=8)
def _secret_in(home: Path) -> bytes:
    """Read once per process: every authenticated request needs it."""
    path = home / "secret_key"
    if not path.exists():
        write_private(path, secrets.token_hex(32).encode(), replace=False)
    return path.read_bytes().strip()


def save_local_admin_key(settings: Settings, key: str) -> Path:
    """Keep `key` in `home/admin_key` (0600), replacing an older one."""
    write_private(settings.admin_key_file, key.encode() + b"\n", replace=True)
    return settings.admin_key_file


def local_admin_key(settings: Settings) -> str | None:
    try:
        key = settings.admin_key_file.read_text().strip()
    except OSError:
        return None
    return key if well_formed(key) else None
