"""Packaging as a library declares it: every third-party module the code imports is declared in
pyproject.toml (ranges, not pins), every declared package is imported or has a stated reason, the lock
file pins a version inside each range, and the licence and citation agree with pyproject."""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import json
import re
import sys
import tomllib
from pathlib import Path

from omegaconf import OmegaConf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Declared but not imported by name, and why (each reason is checked below).
NOT_IMPORTED = {
    "tensorboard": "configs/logger/tensorboard.yaml instantiates Lightning's TensorBoardLogger, which needs it",
    "ipykernel": "the kernel tests/e2e runs notebooks/anytime_inference.ipynb in",
}
# Where users run code from (the package and the entry scripts) must be covered by the main dependencies
# or a user-facing extra (imported inside the function that needs it); tests and the notebook may use dev.
USER_CODE = ["src", "train.py", "eval.py", "sample.py", "prepare.py", "benchmarks"]
TEST_CODE = ["tests", "notebooks"]


def requirements(group: str | None) -> dict[str, Requirement]:
    reqs = PYPROJECT["project"]["dependencies"] if group is None else PYPROJECT["project"]["optional-dependencies"][group]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}


def sources(paths: list[str]):
    """(file, source text) of every .py file and notebook code cell under the paths."""
    for p in paths:
        path = ROOT / p
        for f in [path] if path.is_file() else sorted(path.rglob("*.py")) + sorted(path.rglob("*.ipynb")):
            if f.suffix == ".ipynb":
                cells = json.loads(f.read_text())["cells"]
                text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
                yield f, "\n".join(l for l in text.splitlines() if not l.lstrip().startswith(("%", "!")))
            else:
                yield f, f.read_text()


def local_modules() -> set[str]:
    """Top-level names this checkout provides itself: the package, tests' support, the scripts beside each other."""
    names = {p.name for p in (ROOT / "src").iterdir() if p.is_dir()} | {"support", "conftest", "tests"}
    for d in ["benchmarks", "tests", ROOT]:
        names |= {f.stem for f in Path(ROOT / d).rglob("*.py")} if d != ROOT else {f.stem for f in ROOT.glob("*.py")}
    return names


def third_party_imports(paths: list[str]) -> dict[str, set[str]]:
    """Top-level module -> files importing it (module level or inside functions), stdlib and local excluded."""
    skip = set(sys.stdlib_module_names) | local_modules()
    found: dict[str, set[str]] = {}
    for f, text in sources(paths):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in skip:
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


@functools.cache
def installed() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in installed().get(module, [])}


def undeclared(paths: list[str], declared: set[str]) -> list[str]:
    out = []
    for module, files in sorted(third_party_imports(paths).items()):
        dists = distributions_of(module)
        if not dists & declared:
            where = ", ".join(sorted(files)[:3])
            out.append(f"{module} (distribution {'/'.join(sorted(dists)) or 'not installed'}; imported in {where})")
    return out


def test_every_imported_module_is_declared():
    main = set(requirements(None))
    user = main | {n for g, reqs in PYPROJECT["project"]["optional-dependencies"].items() if g != "dev"
                   for n in requirements(g)}
    missing = undeclared(USER_CODE, user)
    assert not missing, "imported but not in pyproject.toml's dependencies: " + "; ".join(missing)
    missing = undeclared(TEST_CODE, user | set(requirements("dev")))
    assert not missing, "imported by tests or notebooks but not declared (dependencies or the dev extra): " + "; ".join(missing)


def test_every_declared_package_is_imported_or_says_why():
    imported = {d for m in third_party_imports(USER_CODE + TEST_CODE) for d in distributions_of(m)}
    groups = [None, *PYPROJECT["project"]["optional-dependencies"]]
    unused = [name for g in groups for name in requirements(g) if name not in imported and name not in NOT_IMPORTED]
    assert not unused, f"declared in pyproject.toml but never imported (drop them, or say why in NOT_IMPORTED): {unused}"
    assert "TensorBoardLogger" in (ROOT / "configs/logger/tensorboard.yaml").read_text()
    assert "ipykernel" in requirements("dev") and list((ROOT / "notebooks").glob("*.ipynb"))


def test_ranges_not_pins_and_the_lock_satisfies_them():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert not line.startswith("-e") and "==" in line, f"requirements.lock: not an exact pin: {line!r}"
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version.strip()
    assert "elt" not in lock, "requirements.lock pins the project itself (pip freeze --exclude-editable)"
    for group in [None, *PYPROJECT["project"]["optional-dependencies"]]:
        for name, req in requirements(group).items():
            assert not any(s.operator in ("==", "===") for s in req.specifier), f"pyproject pins {req}: declare a range"
            assert name in lock, f"{name} is declared in pyproject.toml but not pinned in requirements.lock"
            assert req.specifier.contains(lock[name], prereleases=True), \
                f"requirements.lock pins {name}=={lock[name]}, outside pyproject's {req}"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-r requirements\.lock", makefile), "make install does not install requirements.lock"


def test_licence_and_citation():
    licence = PYPROJECT["project"]["license"]
    assert licence == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = OmegaConf.to_container(OmegaConf.load(ROOT / "CITATION.cff"))
    assert cff["type"] == "software" and cff["license"] == licence and cff["version"] == PYPROJECT["project"]["version"]
    (paper,) = [r for r in cff["references"] if "2604.09168" in r.get("url", "")]
    assert paper["title"].startswith("ELT: Elastic Looped Transformers")
    readme = (ROOT / "README.md").read_text()
    citing = readme.split("## Citing", 1)
    assert len(citing) == 2, "README.md has no '## Citing' section"
    assert "https://arxiv.org/abs/2604.09168" in citing[1] and "CITATION.cff" in citing[1]
