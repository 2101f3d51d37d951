"""`canaryd validate`: exact `file:line: field: problem` lines, warnings that do not fail, exit codes,
and every policy shipped in policies/ validates."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import yaml

from canaryd.policy import RolloutPolicy
from canaryd.validate import check_tree, run_validate, validate_tree

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_FILES = sorted((REPO_ROOT / "policies").rglob("*.yaml"))
LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[^:]+): (?P<problem>.+)$")

SERVICE = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: NAME, namespace: models}
spec:
  predictor: {model: {modelFormat: {name: sklearn}, storageUri: "gs://b/NAME"}}
"""


def policy(target: str, body: str) -> str:
    return (f"apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {target}, namespace: models}}\n"
            f"spec:\n  target: {{name: {target}}}\n{body}")


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def run(path: Path, **kw: object) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_validate(path, out=out, **kw)  # type: ignore[arg-type]
    return code, out.getvalue().splitlines()


def test_lines_are_exact_relative_and_sorted_by_file_then_line(tmp_path: Path) -> None:
    body = "  steps: [5, 5]\n" + "\n" * 8 + "  analysis: {failureLimt: 1}\n"
    write(tmp_path, {
        "z/iris.yaml": SERVICE.replace("NAME", "iris") + "---\n" + policy("iris", body),
        "a/wine.yaml": SERVICE.replace("NAME", "wine").replace(
            "predictor: ", "predictor: {canaryTrafficPercent: 5}\n  x: "),
    })
    lines = validate_tree(tmp_path)
    assert lines == [
        "a/wine.yaml:5: spec.predictor.canaryTrafficPercent: is owned by canaryd, which sets the traffic split"
        " itself during a rollout; remove it from Git",
        "z/iris.yaml:12: spec.steps: steps must increase strictly, got [5, 5]",
        "z/iris.yaml:21: spec.analysis.failureLimt: unknown field 'failureLimt' (did you mean 'failureLimit'?)",
    ]
    for line in lines:
        assert LINE.match(line), line


def test_errors_exit_1_and_warnings_do_not(tmp_path: Path) -> None:
    write(tmp_path, {"svc.yaml": SERVICE.replace("NAME", "iris"),
                     "pol.yaml": policy("ghost", "  steps: [10]\n")})
    code, out = run(tmp_path)
    assert code == 0
    assert out[0].startswith("warning: pol.yaml:5: spec.target.name: no InferenceService models/ghost")
    assert out[-1] == "0 error(s), 1 warning(s); 1 service(s) ready to roll out"

    (tmp_path / "bad.yaml").write_text("kind: RolloutPolicy\nspec: [\n")
    code, out = run(tmp_path)
    assert code == 1
    assert re.match(r"bad.yaml:\d+: \(yaml\): YAML error: .*whole file is skipped", out[0])
    assert out[1].startswith("warning: ")
    assert out[-1].startswith("1 error(s), 1 warning(s);")
    assert out[-1].endswith("1 blocked")  # the lost file may have held iris's policy


def test_single_file_and_missing_path(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": SERVICE.replace("NAME", "iris"), "b.yaml": "kind: ["})
    assert run(tmp_path / "a.yaml")[0] == 0
    code, out = run(tmp_path / "nope")
    assert code == 1 and "no such file" in out[0]


def test_default_policy_file_is_checked(tmp_path: Path) -> None:
    write(tmp_path, {"repo/a.yaml": SERVICE.replace("NAME", "iris"),
                     "bad-default.yaml": policy("x", "  steps: [1]\n")})
    assert run(tmp_path / "repo", default_policy=REPO_ROOT / "policies" / "default.yaml")[0] == 0
    code, out = run(tmp_path / "repo", default_policy=tmp_path / "bad-default.yaml")
    assert code == 1 and "spec.target: must be absent" in out[0]


def test_namespaces_option(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": SERVICE.replace("NAME", "iris")})
    report = check_tree(tmp_path, namespaces=["other"])
    assert report.errors and "not managed by this canaryd" in report.errors[0]


@pytest.mark.parametrize("path", POLICY_FILES, ids=[p.relative_to(REPO_ROOT).as_posix() for p in POLICY_FILES])
def test_every_shipped_policy_validates(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1
    policy_doc = RolloutPolicy.model_validate(docs[0])
    is_default = path.name == "default.yaml"
    assert (policy_doc.spec.target is None) == is_default
    if not is_default:  # also as canaryd reads a config repo: no errors (the target may be absent)
        report = check_tree(path.parent, [path.name])
        assert report.errors == []
        assert all("no InferenceService" in w for w in report.warnings)


def test_examples_cover_the_documented_features() -> None:
    policies = {p.stem: RolloutPolicy.model_validate(yaml.safe_load(p.read_text()))
                for p in (REPO_ROOT / "policies" / "examples").glob("*.yaml")}
    assert len(policies) >= 5
    metrics = [m for p in policies.values() for m in p.spec.analysis.metrics]
    assert any(m.query for m in metrics)
    assert any(m.max_increase is not None for m in metrics)
    assert any(m.max_ratio is not None for m in metrics)
    assert any(p.spec.gates.confirm_promotion for p in policies.values())
    assert any(p.spec.analysis.on_inconclusive == "rollback" for p in policies.values())
    # every example targets its own service, so the directory is a valid config repo as a whole
    assert check_tree(REPO_ROOT / "policies" / "examples").errors == []


DEFAULT_POLICY = ("apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: default}\n"
                  "spec:\n  steps: [10, 50]\n")


def test_the_repos_own_policies_validate_as_a_policy_library(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15: `canaryd validate policies/` failed on default.yaml ("spec.target: required in the config
    repo"). A tree without InferenceServices is a policy library: a policy without target there is a
    default policy, checked as the daemon checks its default policy file."""
    assert run_validate(REPO_ROOT / "policies") == 0
    out = capsys.readouterr().out
    assert "default.yaml: a default policy (no target), valid as the daemon's default policy" in out
    assert "0 error(s)" in out and "required in the config repo" not in out


def test_a_targetless_policy_is_still_refused_in_a_config_repo(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"svc.yaml": SERVICE.replace("NAME", "iris"), "policy.yaml": DEFAULT_POLICY})
    assert run_validate(tmp_path) == 1
    assert "spec.target: required in the config repo" in capsys.readouterr().out


def test_a_broken_default_policy_in_a_library_names_its_field(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"default.yaml": DEFAULT_POLICY + "  interval: soon\n"})
    assert run_validate(tmp_path) == 1
    out = capsys.readouterr().out
    assert "default.yaml:" in out and "spec.interval" in out
