"""`canaryd validate PATH`: the daemon's own reading of a config repo, for CI before a merge.

It runs exactly the code the daemon runs (load_desired), so a tree that validates here is a tree
the daemon accepts; the output format `file:line: field: problem` is what editors and CI annotators
parse.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from canaryd.desired import DesiredSet, DocError, PolicyFileError, load_desired, load_policy_file
from canaryd.policy import PolicySpec


@dataclass(frozen=True)
class Report:
    errors: list[str]
    warnings: list[str]
    desired: DesiredSet


def _lines(items: Iterable[DocError]) -> list[str]:
    return [str(e) for e in sorted(items, key=lambda e: (e.file, e.line, e.field, e.message))]


def check_tree(
    root: Path,
    paths: Sequence[str] = (".",),
    default_namespace: str = "default",
    default_policy: PolicySpec | None = None,
    namespaces: Iterable[str] | None = None,
) -> Report:
    desired = load_desired(root, paths, default_namespace, default_policy, namespaces)
    return Report(_lines(desired.problems), _lines(desired.warnings), desired)


def validate_tree(
    root: Path,
    paths: Sequence[str] = (".",),
    default_namespace: str = "default",
    default_policy: PolicySpec | None = None,
) -> list[str]:
    """Error lines `file:line: field: problem` (file relative to root), sorted by file and line."""
    return check_tree(root, paths, default_namespace, default_policy).errors


def run_validate(
    path: Path | str,
    *,
    default_namespace: str = "default",
    default_policy: PolicySpec | Path | None = None,
    namespaces: Iterable[str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Print errors, then `warning:` lines, then a summary; 1 if any error, else 0.

    `path` is a repo directory or a single file (then checked alone, relative to its directory);
    `default_policy` may be the daemon's policy file (checked too) or None for the built-in defaults.
    """
    stream = out if out is not None else sys.stdout
    target = Path(path)
    if not target.exists():
        print(f"{target}: no such file or directory", file=stream)
        return 1
    if isinstance(default_policy, Path):
        try:
            default_policy = load_policy_file(default_policy)
        except PolicyFileError as exc:
            print(exc, file=stream)
            print("the default policy is invalid", file=stream)
            return 1
    root, paths = (target.parent, [target.name]) if target.is_file() else (target, ["."])
    report = check_tree(root, paths, default_namespace, default_policy, namespaces)
    errors, notes = _as_policy_library(root, report)
    for line in errors:
        print(line, file=stream)
    for line in report.warnings:
        print(f"warning: {line}", file=stream)
    for line in notes:
        print(line, file=stream)
    n_services = len(report.desired.services)
    n_errors = len(errors) if notes else report.desired.problem_count
    summary = (f"{n_errors} error(s), {report.desired.warning_count} warning(s); "
               f"{n_services} service(s) ready to roll out")
    if report.desired.blocked:
        summary += f", {len(report.desired.blocked)} blocked"
    if notes:
        summary += f"; {len(notes)} default policy file(s) checked as such"
    print(summary, file=stream)
    return 1 if errors else 0


#: The error a policy without `target` gets in a config repo.
_TARGET_REQUIRED = "required in the config repo"


def _as_policy_library(root: Path, report: Report) -> tuple[list[str], list[str]]:
    """The errors to show, and notes on default policies, for a tree that may be a policy library.

    In a config repo a policy must name its InferenceService: a policy without `target` would be a default
    for other teams' services, which only the cluster admin sets (the daemon's `defaultPolicy`). A tree
    with no InferenceService at all is not a config repo but a library of policies (this repository's
    `policies/`, say): there a policy without `target` is a default policy, and it is checked as the
    daemon checks its default policy file, instead of being refused for the missing target.
    """
    desired = report.desired
    targetless = {e.file for e in desired.problems if e.field == "spec.target" and _TARGET_REQUIRED in e.message}
    if desired.services or desired.blocked or not targetless:
        return report.errors, []
    errors = [str(e) for e in desired.problems if e.file not in targetless]
    notes: list[str] = []
    for name in sorted(targetless):
        try:
            load_policy_file(root / name)
        except PolicyFileError as exc:
            errors.append(str(exc).replace(str(root / name), name))
        else:
            notes.append(f"{name}: a default policy (no target), valid as the daemon's default policy (Helm value"
                         " defaultPolicy, or --default-policy); a config repo's policies must name their target")
    return errors, notes
