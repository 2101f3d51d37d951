"""What a user installs: the pinned set covers every declared dependency, and test tooling stays out.

`constraints.txt` is the one source of truth for the versions the scripts, CI and the image install; a
dependency added to pyproject.toml without re-running `scripts/lock.sh` would install unpinned on a
fresh machine, which is how an untested version (a newly typed jsonpatch) once broke `mypy --strict`.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[_name(name)] = version
    return pins


def test_every_declared_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        declared += [r for r in extra if _name(r) != "canaryd"]
    declared += project["build-system"]["requires"]
    missing = sorted({_name(r) for r in declared} - set(_pins()))
    assert not missing, f"not pinned in constraints.txt (run bash scripts/lock.sh): {missing}"


def test_sandbox_dependencies_are_an_extra_not_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = {_name(r) for r in project["project"]["dependencies"]}
    assert "jsonpatch" not in runtime
    assert "jsonpatch" in {_name(r) for r in project["project"]["optional-dependencies"]["sandbox"]}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_package_carries_no_test_campaigns_and_needs_no_extra_outside_the_sandbox() -> None:
    package = ROOT / "canaryd"
    assert not [p for p in package.rglob("*.py") if p.stem in ("crashes", "faults", "faultproxy")]
    for path in package.rglob("*.py"):
        imports = _imports(path)
        rel = path.relative_to(ROOT)
        assert not {m for m in imports if m == "tests" or m.startswith("tests.")}, f"{rel} imports test code"
        if "sandbox" not in rel.parts:
            assert not {m for m in imports if m.split(".")[0] in ("jsonpatch", "jsonpointer")}, \
                f"{rel} needs the sandbox extra"
