"""`Annotated` dependencies. Database work does not come from a dependency: a route passes
its work to `api.database.run_db`, which takes and returns the connection in one thread.

Dependencies are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a
thread hop per request for nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from traindepot.settings import Settings, get_settings


async def settings_dep() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings_dep)]
