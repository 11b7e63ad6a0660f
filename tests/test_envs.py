"""envs/dmflow.yaml (for --sdm conda) names the same packages and versions as pyproject."""

import re
import tomllib

import yaml

from helpers import REPO

CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower(), spec.replace(" ", "")


def test_conda_env_matches_pyproject_dependencies():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = dict(_split(r) for r in pyproject["project"]["dependencies"])
    wanted = {CONDA_NAMES.get(k, k): v for k, v in wanted.items()}
    env = yaml.safe_load((REPO / "envs" / "dmflow.yaml").read_text())
    assert "conda-forge" in env["channels"]
    conda = dict(_split(d) for d in env["dependencies"] if isinstance(d, str) and not d.startswith("python "))
    conda.pop("python", None)
    conda.pop("pip", None)
    assert conda == wanted


def test_conda_env_pip_section_is_the_baselines_extra():
    """The rules run in envs/dmflow.yaml: its pip section installs the [baselines] extra, pinned the same."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    env = yaml.safe_load((REPO / "envs" / "dmflow.yaml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert "pip" in env["dependencies"] and len(pip) == 1
    assert dict(_split(r) for r in pip[0]) == dict(
        _split(r) for r in pyproject["project"]["optional-dependencies"]["baselines"]
    )


def test_the_user_asked_for_packages_are_all_there():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = {_split(r)[0] for r in pyproject["project"]["dependencies"]}
    assert {"snakemake", "pytorch-lightning", "numpy", "pandas", "cvxpy"} <= names


def test_every_rule_declares_the_conda_env():
    rules = [p for p in (REPO / "rules").glob("*.smk") if p.name != "common.smk"]
    for path in rules:
        text = path.read_text()
        assert text.count("\nrule ") + text.startswith("rule ") == text.count("    conda:\n        CONDA_ENV"), (
            path.name
        )
    assert (REPO / "rules" / "../envs/dmflow.yaml").resolve() == (REPO / "envs" / "dmflow.yaml").resolve()


def test_python_floor_is_snakemakes_and_the_license_file_exists():
    """snakemake 9 needs Python 3.11: pyproject, the conda env and the README say so; LICENSE is shipped."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"
    env = yaml.safe_load((REPO / "envs" / "dmflow.yaml").read_text())
    assert "python >=3.11" in env["dependencies"]
    assert "Python >= 3.11" in (REPO / "README.md").read_text()
    license_text = (REPO / "LICENSE").read_text()
    assert pyproject["project"]["license"] == "MIT" and license_text.startswith("MIT License")
