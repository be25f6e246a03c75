"""The README's spec reference is the one generated from the spec's JSON Schema: change the
spec and this fails until `scripts/spec-reference` is run."""

from __future__ import annotations

from traindepot import spec_reference
from traindepot.spec import JobSpec


def test_readme_spec_reference_is_current() -> None:
    readme = spec_reference.README.read_text()
    assert spec_reference.BEGIN in readme and spec_reference.END in readme
    assert spec_reference.rewrite(readme) == readme, "stale: run scripts/spec-reference"


def test_the_reference_names_every_field_of_the_spec() -> None:
    reference = spec_reference.render()
    for field in JobSpec.model_fields:
        assert f"| `{field}` |" in reference
    assert "#### DatasetSpec" in reference
