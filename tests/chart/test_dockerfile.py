"""The container image definition (Dockerfile, .dockerignore), checked without building it.

Base images cannot be pulled here, so the Dockerfile is parsed (a small parser below: line
continuations, comments, exec and shell forms) and its stages are checked for what a reviewer asks:
slim pinned base, wheels built in a builder stage, a runtime stage without build tools, a numeric
non-root user, `canaryd run` as the entry point, the HTTP port and a health check.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

BUILD_TOOLS = {
    "gcc", "g++", "cc", "make", "cmake", "build-essential", "clang", "libc6-dev", "libc-dev", "python3-dev",
    "libffi-dev", "libssl-dev", "pkg-config", "cargo", "rustc", "autoconf", "automake", "libtool", "curl", "wget",
}


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the line, continuations joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, else None."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
        return None


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile. Comments and parser directives are skipped; `\\` continues a line."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = " ".join((pending + stripped).split())
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued line"

    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        elif ins.keyword != "ARG" or stages:
            assert stages, f"line {ins.line}: {ins.keyword} before the first FROM"
            stages[-1].instructions.append(ins)
    return stages


def apt_packages(run: str) -> set[str]:
    """Packages named by `apt-get install` / `apt install` in a shell RUN."""
    found: set[str] = set()
    for command in re.split(r"&&|;|\|\|", run):
        words = shlex.split(command)
        for tool in ("apt-get", "apt"):
            if tool in words and "install" in words:
                after = words[words.index("install") + 1:]
                found |= {w.split("=")[0] for w in after if not w.startswith("-")}
    return found


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_parser_handles_continuations_and_forms() -> None:
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG X=1\nFROM a:1 AS b\nRUN echo 1 \\\n  # note\n  && echo 2\n"
        'CMD ["run"]\nFROM c:2\nUSER 5\n')
    assert [(s.image, s.name) for s in parsed] == [("a:1", "b"), ("c:2", None)]
    assert parsed[0].all("RUN")[0].args == "echo 1 && echo 2"
    assert parsed[0].all("CMD")[0].exec_form() == ["run"]
    assert apt_packages("apt-get update && apt-get install -y --no-install-recommends git=1:2.39 vim") == {
        "git", "vim"}


def test_multi_stage_on_a_pinned_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        repo, _, tag = stage.image.partition(":")
        assert repo in ("python", "docker.io/library/python"), stage.image
        tag = tag.split("@")[0]
        assert re.fullmatch(r"3\.12(\.\d+)?-slim(-[a-z]+)?", tag), f"{stage.image}: pin python:3.12-slim by tag"
    assert stages[0].name == "builder"


def test_builder_builds_wheels(stages: list[Stage]) -> None:
    runs = " ".join(i.args for i in stages[0].all("RUN"))
    assert "pip wheel" in runs
    copied = [i.args.split()[0] for i in stages[0].all("COPY")]
    assert "pyproject.toml" in copied and "canaryd" in copied


def test_builder_installs_the_pinned_set_without_extras(stages: list[Stage]) -> None:
    """The image runs the dependency versions CI tested (constraints.txt), and none of the sandbox's."""
    copies = " ".join(i.args for i in stages[0].all("COPY"))
    assert "constraints.txt" in copies.split(), copies
    pip_runs = [i.args for i in stages[0].all("RUN") if "pip wheel" in i.args]
    assert pip_runs and all("PIP_CONSTRAINT=/src/constraints.txt" in r for r in pip_runs), pip_runs
    every_pip = " ".join(i.args for s in stages for i in s.all("RUN") if "pip" in i.args)
    assert "[" not in every_pip, f"no extras (sandbox, dev) in the image: {every_pip}"


def test_final_stage_has_no_build_tools(final: Stage) -> None:
    runs = [i.args for i in final.all("RUN")]
    installed = set().union(*(apt_packages(r) for r in runs))
    assert installed == {"git", "openssh-client"}
    assert not installed & BUILD_TOOLS
    for run in runs:
        if "apt-get install" in run:
            assert "--no-install-recommends" in run
            assert "rm -rf /var/lib/apt/lists" in run, "apt lists must not stay in the image"
        assert "pip install" not in run or "--no-cache-dir" in run, "no pip cache in the runtime image"
        assert "pip wheel" not in run
    # Only the built virtualenv comes from the builder: no wheels, no sources.
    from_builder = [i.args for i in final.all("COPY") if "--from=" in i.args]
    assert from_builder, "the runtime stage copies the builder's result"
    assert all(re.search(r"--from=builder\s+/opt/canaryd\s+/opt/canaryd$", a) for a in from_builder), from_builder
    assert not [i for i in final.all("COPY") + final.all("ADD") if "--from=" not in i.args], \
        "the runtime stage takes nothing from the build context"


def test_final_stage_runs_as_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the runtime stage sets USER"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) != 0, users[-1].args
    assert int(user) == 10001, "matches the chart's runAsUser"
    assert not group or (group.isdigit() and int(group) != 0)
    # USER comes after every RUN: nothing runs as root after it, and the final process does not either.
    assert final.instructions.index(users[-1]) > max(final.instructions.index(r) for r in final.all("RUN"))


def test_entrypoint_is_canaryd_run(final: Stage) -> None:
    entry = final.all("ENTRYPOINT")
    cmd = final.all("CMD")
    assert entry and entry[-1].exec_form() == ["canaryd"]
    assert cmd and cmd[-1].exec_form() == ["run"]
    env = " ".join(i.args for i in final.all("ENV"))
    assert "/opt/canaryd/bin" in env, "canaryd is on PATH"
    assert re.search(r"\bHOME=/tmp\b", env), "git and ssh need a writable HOME on a read-only root filesystem"


def test_exposes_the_chart_port_and_checks_health(final: Stage) -> None:
    values = yaml.safe_load((ROOT / "charts" / "canaryd" / "values.yaml").read_text())
    exposed = {p.split("/")[0] for i in final.all("EXPOSE") for p in i.args.split()}
    assert str(values["containerPort"]) in exposed
    checks = final.all("HEALTHCHECK")
    assert checks and "/healthz" in checks[-1].args


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore matching, enough for plain names, globs, `**/` and `!` exceptions."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        candidates = {pat, pat.removeprefix("**/")}
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes) or (
                pat.startswith("**/") and any(fnmatch.fnmatchcase(part, pat[3:]) for part in parts)):
            result = not negate
    return result


def test_dockerignore_keeps_the_context_small(stages: list[Stage]) -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for path in (".git", ".git/config", "tests", "tests/unit/test_engine.py", "charts", ".venv",
                 "canaryd/__pycache__/x.pyc"):
        assert _ignored(patterns, path), f"{path} must not be in the build context"
    # What the Dockerfile copies must still be there.
    for stage in stages:
        for ins in stage.all("COPY"):
            if "--from=" in ins.args:
                continue
            for source in ins.args.split()[:-1]:
                assert not _ignored(patterns, source), f".dockerignore hides {source}, which line {ins.line} copies"
                assert (ROOT / source).exists(), source
