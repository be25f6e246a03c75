"""`traindepot keys ...` (mounted by traindepot/cli.py): API keys, for operators, straight
on the database (the same `TRAINDEPOT_DATABASE_URL` and secret as the API). Admins can do
the same over HTTP (`POST/GET/DELETE /keys`)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _database_url() -> str:
    from traindepot.settings import get_settings

    url = get_settings().database_url
    if not url:
        err.print(
            "[red]TRAINDEPOT_DATABASE_URL is not set: the keys commands work on the database[/]"
        )
        raise typer.Exit(2)
    return url


@app.command()
def create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    admin: Annotated[bool, typer.Option(help="An admin key: every tenant, /keys, quotas.")] = False,
    name: Annotated[str, typer.Option(help="A note: whose key, what for.")] = "",
) -> None:
    """Create a key and print it. It is shown this once: only its hash is stored."""
    from api import keyring
    from db.session import session_scope
    from traindepot import apikeys
    from traindepot.settings import get_settings

    if not re.fullmatch(apikeys.TENANT_PATTERN, tenant):
        err.print(f"[red]--tenant {tenant!r}: {apikeys.TENANT_RULE}[/]")
        raise typer.Exit(2)
    if len(name) > 200:
        err.print("[red]--name: at most 200 characters[/]")
        raise typer.Exit(2)
    with session_scope(_database_url()) as session:
        row, key = keyring.issue(
            session=session, settings=get_settings(), tenant=tenant, name=name, admin=admin
        )
    err.print(
        f"key {row.id} ({row.prefix}) for tenant {row.tenant}"
        f"{' [bold]admin[/]' if row.admin else ''}; shown once, keep it now:"
    )
    console.print(key)


@app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """Every key (never the key itself: its prefix)."""
    from db import keys
    from db.session import session_scope

    table = Table("id", "prefix", "tenant", "name", "admin", "created", "revoked")
    with session_scope(_database_url()) as session:
        for key in keys.list_keys(session=session, tenant=tenant):
            table.add_row(
                str(key.id),
                key.prefix,
                key.tenant,
                key.name,
                "yes" if key.admin else "",
                key.created_at.isoformat(timespec="seconds"),
                key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
            )
    console.print(table)


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")]) -> None:
    """Revoke a key: the next request with it gets 401."""
    from api import keycache
    from db import keys
    from db.session import session_scope
    from traindepot.settings import get_settings

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        err.print(f"[red]{key_id!r} is not a key id (a UUID, see `traindepot keys list`)[/]")
        raise typer.Exit(2) from None
    with session_scope(_database_url()) as session:
        key = keys.revoke(session=session, key_id=parsed)
    if key is None:
        err.print(f"[red]no key {key_id}[/]")
        raise typer.Exit(1)
    keycache.announce_revoked(get_settings().redis_url, parsed)
    console.print(f"{key.id} ({key.prefix}) revoked at {key.revoked_at}")
