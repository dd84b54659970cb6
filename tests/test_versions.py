"""The versions users can trust: pyproject's bounds and the constraints file of the versions CI last passed with."""

from __future__ import annotations

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

CONSTRAINTS = REPO / "constraints" / "ci.txt"


def _dependencies() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["gguf"]]


def test_every_dependency_has_an_upper_bound_on_its_next_major():
    for requirement in _dependencies():
        uppers = [s for s in requirement.specifier if s.operator == "<"]
        assert uppers, f"{requirement}: add `,<NEXT_MAJOR`, a release no test here has seen"


def test_the_constraints_pin_every_dependency_inside_its_bounds():
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    for requirement in _dependencies():
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned, f"{requirement.name} is not pinned in {CONSTRAINTS.name}: regenerate it (README)"
        assert requirement.specifier.contains(pinned, prereleases=True), f"{requirement.name}=={pinned}: {requirement}"
