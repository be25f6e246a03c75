"""`Annotated` dependencies. Database work does not come from a dependency: a route passes
its work to `api.database.run_db`, which takes and returns the connection in one thread."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from traindepot.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]
