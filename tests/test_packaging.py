"""pyproject.toml and environment.yml name the same dependencies, and torch stays installable.

Two ways to install the course (pip: `pip install -e ".[course]"`, conda: `environment.yml`)
must give the same environment, so the dependency lists are compared here rather than trusted
to stay in step. torch must admit 2.13.0 (the CPU wheel CI installs) and torchvision must
never appear: pulling it in drags a matching, multi-GB CUDA torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CI_TORCH = "2.13.0"
FORBIDDEN = {"torchvision"}


def pyproject_requirements() -> dict[str, Requirement]:
    """Core dependencies plus the `course` extra, keyed by normalised name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["course"]
    return _by_name(lines, "pyproject.toml")


def environment_requirements() -> dict[str, Requirement]:
    """The pip section of environment.yml (pip options such as `-e .` skipped), by name."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml: want exactly one `- pip:` section"
    return _by_name([line for line in pip_lists[0] if not line.startswith("-")], "environment.yml")


def _by_name(lines: list[str], source: str) -> dict[str, Requirement]:
    requirements: dict[str, Requirement] = {}
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)  # case, '-', '_' and '.' all normalised
        assert name not in requirements, f"{source}: {requirement.name} listed twice"
        requirements[name] = requirement
    return requirements


def test_same_dependency_names():
    pyproject, environment = set(pyproject_requirements()), set(environment_requirements())
    assert pyproject == environment, (
        f"only in pyproject.toml: {sorted(pyproject - environment)}; "
        f"only in environment.yml: {sorted(environment - pyproject)}"
    )


def test_same_version_specifiers():
    pyproject, environment = pyproject_requirements(), environment_requirements()
    differ = {
        name: (str(pyproject[name].specifier), str(environment[name].specifier))
        for name in set(pyproject) & set(environment)
        if pyproject[name].specifier != environment[name].specifier
    }
    assert not differ, f"specifiers differ (pyproject, environment.yml): {differ}"


def test_environment_yml_basics():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "minidiff"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda


@pytest.mark.parametrize("source", [pyproject_requirements, environment_requirements], ids=["pyproject", "environment"])
def test_torch_admits_ci_version_and_no_torchvision(source):
    requirements = source()
    assert "torch" in requirements
    torch = requirements["torch"]
    assert torch.specifier.contains(CI_TORCH, prereleases=True), (
        f"torch{torch.specifier} does not admit {CI_TORCH}, the CPU wheel CI installs; "
        "any other torch downloads a multi-GB CUDA build"
    )
    assert not FORBIDDEN & set(requirements), f"never depend on {sorted(FORBIDDEN)}"


def test_makefile_installs_pinned_torch_in_the_same_pip_command():
    # A torch pin in a separate pip call lets the other call resolve torch on its own (and
    # download CUDA torch); pinned in the same call, the resolver must take the local wheel.
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"\bpip install\b", line)]
    assert installs, "Makefile: no pip install line"
    for line in installs:
        assert f"torch=={CI_TORCH}" in line, f"Makefile: pip install without torch=={CI_TORCH}: {line.strip()}"
        assert "torchvision" not in line


def test_package_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "minidiff" and project["version"] == "0.1.0"
    assert project["requires-python"] == ">=3.10"
