"""requirements-lock.txt agrees with pyproject.toml (issue 21): every dependency of the
runtime, the `dev` extra and the build backend is locked, at a version its range admits,
with its sha256; torch is the build constraints-cpu.txt names; and every install path of
the project (scripts/install for the demo and the tests, the Dockerfile) installs from it.
`bash scripts/lock` makes the lock again after pyproject.toml changes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-lock.txt"
# The platform the lock is made for: CPython 3.11 on Linux x86_64.
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def locked(text: str) -> dict[str, tuple[Version, int]]:
    """Each locked package: its version and how many sha256 hashes it carries."""
    out: dict[str, tuple[Version, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        pin = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if pin:
            name = canonicalize_name(pin.group(1))
            out[name] = (
                Version(pin.group(2)),
                len(re.findall(r"--hash=sha256:[0-9a-f]{64}", block)),
            )
    return out


def declared(pyproject: dict[str, Any]) -> list[tuple[str, Requirement]]:
    """(where, requirement) for the runtime, the dev extra and the build backend."""
    project = pyproject["project"]
    groups = [
        ("dependencies", project["dependencies"]),
        ("optional-dependencies.dev", project["optional-dependencies"]["dev"]),
        ("build-system.requires", pyproject["build-system"]["requires"]),
    ]
    return [(where, Requirement(line)) for where, lines in groups for line in lines]


def disagreements(pyproject: dict[str, Any], lock: dict[str, tuple[Version, int]]) -> list[str]:
    problems = []
    for where, requirement in declared(pyproject):
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue  # not for the lock's platform
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{requirement} ({where}) is not in the lock: run scripts/lock")
            continue
        version, hashes = lock[name]
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(
                f"the lock has {name} {version}, which {requirement} ({where}) does not admit:"
                " run scripts/lock"
            )
        if hashes == 0:
            problems.append(f"{name} has no sha256 in the lock")
    return problems


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_lock_satisfies_every_range_of_pyproject() -> None:
    assert disagreements(pyproject(), locked(LOCK.read_text())) == []


def test_every_locked_package_has_a_hash() -> None:
    lock = locked(LOCK.read_text())
    assert len(lock) > 50
    assert [name for name, (_, hashes) in lock.items() if hashes == 0] == []


def test_a_range_the_lock_breaks_is_caught() -> None:
    """The check above can fail: a range moved past the locked version, and a new
    dependency that was never locked."""
    changed = pyproject()
    deps = changed["project"]["dependencies"]
    fastapi = next(i for i, d in enumerate(deps) if d.startswith("fastapi"))
    version = locked(LOCK.read_text())["fastapi"][0]
    deps[fastapi] = f"fastapi>{version}"
    deps.append("a-package-nobody-locked>=1")
    found = disagreements(changed, locked(LOCK.read_text()))
    assert len(found) == 2
    assert f"fastapi {version}" in found[0]
    assert "a-package-nobody-locked" in found[1]


def test_torch_is_the_pinned_cpu_build() -> None:
    pin = Requirement((ROOT / "constraints-cpu.txt").read_text().strip())
    version, hashes = locked(LOCK.read_text())["torch"]
    assert pin.specifier.contains(version)
    assert version.local == "cpu" and hashes >= 1


def test_every_install_path_installs_from_the_lock() -> None:
    install = (ROOT / "scripts" / "install").read_text()
    assert "--require-hashes -r requirements-lock.txt" in install
    for script in ("demo", "test"):
        assert "bash scripts/install" in (ROOT / "scripts" / script).read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(
        r"pip install --require-hashes[^\n]*\\?\n?\s*-r requirements-lock.txt", dockerfile
    )
