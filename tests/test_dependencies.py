"""Dependencies: held at or above the security minimums kept in the repository
(security-minimums.toml, chosen from advisories known when written; nothing is
queried online), and locked with hashes (requirements.lock) for every
requirement pyproject.toml names."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
MINIMUMS: dict[str, str] = {
    name: minimum
    for table in tomllib.loads((REPO / "security-minimums.toml").read_text()).values()
    for name, minimum in table.items()
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked() -> dict[str, tuple[str, str]]:
    """requirements.lock: name -> (pinned version, the entry's text with its hashes)."""
    entries: dict[str, tuple[str, str]] = {}
    text = (REPO / "requirements.lock").read_text()
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        if match := _PIN.match(entry):
            entries[canonicalize_name(match[1])] = (match[2], entry)
    return entries


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def test_the_minimums_table_is_well_formed() -> None:
    assert len(MINIMUMS) >= 5
    for name, minimum in MINIMUMS.items():
        assert name == canonicalize_name(name), name
        Version(minimum)  # raises for a version that is not one


@pytest.mark.parametrize("name", sorted(MINIMUMS))
def test_each_installed_package_is_at_or_above_its_security_minimum(name: str) -> None:
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.fail(f"{name} is in security-minimums.toml but not installed: drop its row if it is no longer used")
    assert Version(installed) >= Version(MINIMUMS[name]), (
        f"{name} {installed} is below {MINIMUMS[name]}, the release with its latest known security fix")


@pytest.mark.parametrize("name", sorted(MINIMUMS))
def test_the_lock_pins_each_package_at_or_above_its_security_minimum(name: str) -> None:
    pinned, _ = locked()[name]
    assert Version(pinned) >= Version(MINIMUMS[name]), f"requirements.lock pins {name} {pinned}"


def test_the_lock_pins_every_requirement_of_pyproject_with_hashes() -> None:
    """A dependency added to pyproject.toml without regenerating the lock fails here
    (the command is in the lock's header)."""
    lock = locked()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in requirements.lock: regenerate it"
        pinned, _ = lock[name]
        assert requirement.specifier.contains(pinned, prereleases=True), (name, pinned, str(requirement.specifier))
    for locked_name, (_, entry) in lock.items():
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"{locked_name} has no hash in requirements.lock"
    header = (REPO / "requirements.lock").read_text().splitlines()[:2]
    assert "--generate-hashes" in header[1] and "--extra test" in header[1], header
