"""The repository tells its own story: no file cites anything outside it, every path and
module the documents name exists, the README's claims are the code's, and the packages
depend on each other one way (docs/architecture.md, "Packages")."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from traindepot import training_args

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "worker", "db", "traindepot")
TEXT_SUFFIXES = {".py", ".md", ".html", ".toml", ".yml", ".yaml", ".txt", ".ini", ".cfg", ""}
# .venv-lock (scripts/lock) and .venv-latest (LATEST=1 scripts/test) are virtual environments too.
SKIPPED_DIRS = {
    ".git",
    ".venv",
    ".venv-lock",
    ".venv-latest",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}
# Places outside the repository that a file could lean on. Spelt in pieces so that this
# file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [
            "DESIGN" + r"\.md",
            r"\.\./" + "shared",
            r"(?<![\w.])/" + r"work/",
            r"\bshared/" + "DESIGN",
        ]
    )
)
# A path inside the repository, as documents and comments write them: `worker/flusher.py`.
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:api|worker|db|traindepot|tests|bench|scripts|docs)/[\w./-]*[\w])"
)
# A module of the project, as documents write them: `traindepot.dispatch`.
MODULE = re.compile(r"(?<![\w./-])((?:api|worker|db|traindepot)(?:\.[a-z_][a-z0-9_]*)+)")


def repository_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        parts = set(path.relative_to(ROOT).parts)
        if parts & SKIPPED_DIRS or any(p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size < 1_000_000:
            yield path


def text_of(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return ""


def test_no_file_cites_anything_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in repository_files()
        for n, line in enumerate(text_of(path).splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert cited == []


def module_exists(dotted: str) -> bool:
    """`a.b.c` names an existing module when `a/b.py` or the package `a/b/` exists (what
    follows may be an attribute)."""
    parts = dotted.split(".")
    base = ROOT / parts[0] / parts[1]
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_the_architecture_document_names_only_what_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(REPO_PATH.findall(text))
    modules = set(MODULE.findall(text))
    assert len(paths) > 20 and modules  # the document does name the code
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
    assert sorted(m for m in modules if not module_exists(m)) == []


def test_every_section_cited_in_the_architecture_document_exists() -> None:
    headings = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "architecture.md").read_text(), re.M))
    cited: set[str] = set()
    for path in repository_files():
        # Comments continue on the next line: join them before looking.
        text = re.sub(r"\n\s*#\s*", " ", text_of(path))
        cited.update(re.findall(re.escape("docs/architecture.md") + r',\s+"([^"]+)"', text))
    assert cited and sorted(cited - headings) == []


@pytest.mark.parametrize(
    "path",
    [p for p in repository_files() if p.suffix in (".py", ".md")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_path_a_file_names_exists(path: Path) -> None:
    text = text_of(path)
    missing = sorted(
        name
        for name in set(REPO_PATH.findall(text))
        if "*" not in name and "{" not in name and not (ROOT / name).exists()
    )
    assert missing == []


def test_readme_lists_the_server_owned_training_args_of_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- server-owned -->(.*?)<!-- /server-owned -->", readme, re.S)
    assert block is not None
    listed = set(re.findall(r"`([\w*]+)`", block.group(1)))
    owned = set(training_args.SERVER_OWNED) | {
        prefix + "*" for prefix in training_args.SERVER_OWNED_PREFIXES
    }
    assert listed == owned


def imported_packages(path: Path) -> set[str]:
    """The top-level names `path` imports, lazily inside functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


# Who may import whom: traindepot is shared by all and imports no other package but, in the
# CLI alone, the worker and the API it starts; db builds on traindepot; the API reaches the
# workers only through traindepot.dispatch.
ALLOWED = {
    "traindepot": {"traindepot", "worker", "api"},
    "db": {"db", "traindepot"},
    "api": {"api", "db", "traindepot"},
    "worker": {"worker", "db", "traindepot"},
}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_depend_on_each_other_one_way(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted((imported_packages(path) & set(PACKAGES)) - allowed)
        for path in (ROOT / package).rglob("*.py")
        for allowed in [ALLOWED[package]]
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def test_only_the_cli_starts_other_packages() -> None:
    """traindepot imports worker or api only where it starts them (the CLI, the stack), and
    in the recipes, whose worker side runs in the training child (see the next test)."""
    starters = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "traindepot").rglob("*.py")
        if imported_packages(path) & {"worker", "api"}
        and path.parent != ROOT / "traindepot" / "recipes"
    }
    assert starters <= {"traindepot/cli.py", "traindepot/cli_server.py", "traindepot/stack.py"}


def module_level_imports(path: Path) -> set[str]:
    """The top-level names `path` imports when it is imported (not inside functions, not
    under `if TYPE_CHECKING:`)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_recipes_import_the_worker_side_lazily() -> None:
    """The API imports every recipe at start-up: a recipe module imports the worker, torch,
    transformers or datasets only inside the methods the training child calls."""
    heavy = {"worker", "api", "torch", "transformers", "datasets", "peft", "numpy"}
    eager = {
        str(path.relative_to(ROOT)): sorted(module_level_imports(path) & heavy)
        for path in (ROOT / "traindepot" / "recipes").glob("*.py")
    }
    assert {name: found for name, found in eager.items() if found} == {}
