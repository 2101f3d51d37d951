"""load_desired over real directory trees: one broken document never moves another service, and a
service whose policy is broken is blocked, never given the default policy."""

from __future__ import annotations

import io
import os
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from canaryd.desired import (
    MAX_ERRORS,
    MAX_ERRORS_PER_FILE,
    MAX_FILE_BYTES,
    DesiredSet,
    PolicyFileError,
    ServiceKey,
    load_desired,
    load_policy_file,
)
from canaryd.manifests import spec_hash
from canaryd.policy import PolicySpec
from canaryd.validate import run_validate

REPO_ROOT = Path(__file__).resolve().parents[2]

IRIS = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  namespace: models
spec:
  predictor:
    model: {modelFormat: {name: sklearn}, storageUri: "gs://bucket/iris/v2"}
"""
WINE = IRIS.replace("iris", "wine")
IRIS_KEY = ServiceKey("models", "iris")
WINE_KEY = ServiceKey("models", "wine")


def policy(target: str = "iris", body: str = "steps: [10, 20]", namespace: str = "models") -> str:
    spec = textwrap.indent(body, "  ")
    return (
        "apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\n"
        f"metadata: {{name: {target}-policy, namespace: {namespace}}}\n"
        f"spec:\n  target: {{name: {target}}}\n{spec}\n"
    )


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def load(root: Path, files: dict[str, str], **kw: object) -> DesiredSet:
    return load_desired(tree(root, files), **kw)  # type: ignore[arg-type]


def errors_of(ds: DesiredSet) -> list[str]:
    return [str(e) for e in ds.problems]


# ---------------------------------------------------------------------------------------------
# table: (files, expected error line, expected blocked service, service that must still load)


@dataclass
class Case:
    id: str
    files: dict[str, str]
    error: str  # "file:line: field" prefix of one expected error
    message: str  # part of its message
    blocked: ServiceKey | None
    unaffected: ServiceKey | None = WINE_KEY


CASES = [
    Case(
        "unknown-field-typo",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE,
         "pol/iris.yaml": policy(body="analysis:\n  failureLimt: 3")},
        "pol/iris.yaml:7: spec.analysis.failureLimt", "did you mean 'failureLimit'", IRIS_KEY,
    ),
    Case(
        "steps-not-increasing",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE, "pol/iris.yaml": policy(body="steps: [5, 50, 25]")},
        "pol/iris.yaml:6: spec.steps", "must increase strictly", IRIS_KEY,
    ),
    Case(
        "bad-duration",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE, "pol/iris.yaml": policy(body="interval: 1 minute")},
        "pol/iris.yaml:6: spec.interval", "invalid duration", IRIS_KEY,
    ),
    Case(
        "metric-field-for-other-kind",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE,
         "pol/iris.yaml": policy(body="analysis:\n  metrics:\n    - name: latency\n      max: 3")},
        "pol/iris.yaml:8: spec.analysis.metrics[0]", "does not take max", IRIS_KEY,
    ),
    Case(
        "policy-without-target",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE,
         "pol/p.yaml": "apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n"
                       "  steps: [1, 2]\n"},
        "pol/p.yaml:4: spec.target", "required in the config repo", None, None,
    ),
    Case(
        "policy-metadata-typo",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE,
         "pol/iris.yaml": policy().replace("namespace: models}", "namespace: models, nmespace: x}")},
        "pol/iris.yaml:3: metadata.nmespace", "did you mean 'namespace'", IRIS_KEY,
    ),
    Case(
        "policy-unknown-version",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE,
         "pol/iris.yaml": policy().replace("canaryd.io/v1alpha1", "canaryd.io/v1")},
        "pol/iris.yaml:1: apiVersion", "unsupported", IRIS_KEY,
    ),
    Case(
        "canary-percent-v1beta1",
        {"svc/iris.yaml": IRIS.replace("  predictor:\n", "  predictor:\n    canaryTrafficPercent: 10\n"),
         "svc/wine.yaml": WINE},
        "svc/iris.yaml:8: spec.predictor.canaryTrafficPercent", "owned by canaryd", IRIS_KEY,
    ),
    Case(
        "canary-percent-transformer",
        {"svc/iris.yaml": IRIS + "  transformer: {canaryTrafficPercent: 10, containers: []}\n",
         "svc/wine.yaml": WINE},
        "svc/iris.yaml:9: spec.transformer.canaryTrafficPercent", "owned by canaryd", IRIS_KEY,
    ),
    Case(
        "raw-deployment",
        {"svc/iris.yaml": IRIS.replace(
            "  namespace: models\n",
            "  namespace: models\n  annotations:\n    serving.kserve.io/deploymentMode: RawDeployment\n"),
         "svc/wine.yaml": WINE},
        "svc/iris.yaml:7: metadata.annotations.serving.kserve.io/deploymentMode", "cannot be canaried",
        IRIS_KEY,
    ),
    Case(
        "standard-mode",
        {"svc/iris.yaml": IRIS.replace(
            "  namespace: models\n",
            "  namespace: models\n  annotations: {serving.kserve.io/deploymentMode: Standard}\n"),
         "svc/wine.yaml": WINE},
        "svc/iris.yaml:6: metadata.annotations.serving.kserve.io/deploymentMode", "'Standard'", IRIS_KEY,
    ),
    Case(
        "missing-predictor",
        {"svc/iris.yaml": IRIS.split("spec:")[0] + "spec: {transformer: {}}\n", "svc/wine.yaml": WINE},
        "svc/iris.yaml:6: spec.predictor", "required", IRIS_KEY,
    ),
    Case(
        "bad-name",
        {"svc/iris.yaml": IRIS.replace("name: iris", "name: Iris_2"), "svc/wine.yaml": WINE},
        "svc/iris.yaml:4: metadata.name", "not a valid InferenceService name", ServiceKey("models", "Iris_2"),
    ),
    Case(
        "isvc-metadata-typo",
        {"svc/iris.yaml": IRIS.replace("  namespace: models", "  nmespace: models"), "svc/wine.yaml": WINE},
        "svc/iris.yaml:5: metadata.nmespace", "did you mean 'namespace'", ServiceKey("default", "iris"),
    ),
    Case(
        "non-string-label",
        {"svc/iris.yaml": IRIS.replace("  namespace: models\n", "  namespace: models\n  labels: {v: 2}\n"),
         "svc/wine.yaml": WINE},
        "svc/iris.yaml:6: metadata.labels.v", "must be strings", IRIS_KEY,
    ),
    Case(
        "duplicate-yaml-key",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE,
         "pol/iris.yaml": policy(body="analysis:\n  failureLimit: 1\n  failureLimit: 9")},
        "pol/iris.yaml:8: spec.analysis.failureLimit", "duplicate key", IRIS_KEY,
    ),
    Case(
        "unsupported-isvc-version",
        {"svc/iris.yaml": IRIS.replace("serving.kserve.io/v1beta1", "serving.kserve.io/v1alpha1"),
         "svc/wine.yaml": WINE},
        "svc/iris.yaml:1: apiVersion", "unsupported InferenceService version", IRIS_KEY,
    ),
    Case(
        "components-missing",
        {"svc/iris.yaml": IRIS, "svc/wine.yaml": WINE,
         "pol/iris.yaml": policy().replace("target: {name: iris}", "target: {name: iris, components: [explainer]}")},
        "pol/iris.yaml:5: spec.target.components", "explainer not in", IRIS_KEY,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_document_blocks_only_its_service(tmp_path: Path, case: Case) -> None:
    ds = load(tmp_path, case.files)
    matching = [e for e in errors_of(ds) if e.startswith(case.error + ":")]
    assert matching, f"no error starting with {case.error!r} in {errors_of(ds)}"
    assert any(case.message in e for e in matching), matching
    if case.blocked is not None:
        assert case.blocked not in ds.services
        assert case.blocked in ds.blocked
        assert any(e.service == case.blocked for e in ds.problems)
    if case.unaffected is not None:
        assert case.unaffected in ds.services
        assert ds.services[case.unaffected].policy == PolicySpec()
        assert case.unaffected not in ds.blocked


# ---------------------------------------------------------------------------------------------


def test_valid_tree_normalises_and_attaches_policies(tmp_path: Path) -> None:
    iris = IRIS.replace(
        "  namespace: models\n",
        "  namespace: models\n  uid: 1234\n  resourceVersion: '99'\n  labels: {team: ml}\n"
        "  annotations: {serving.kserve.io/deploymentMode: Serverless}\n",
    ) + "status:\n  url: http://iris\n"
    files = {
        "svc/iris.yaml": iris,
        "svc/wine.yml": "# a comment first\n" + WINE.replace("  namespace: models\n", ""),
        "pol/iris.yaml": policy(body="steps: [10, 20]"),
        "other/configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n---\n42\n",
        ".git/ignored.yaml": "{{{ not yaml",
    }
    ds = load(tmp_path, files, default_namespace="models")
    assert ds.errors == []
    assert set(ds.services) == {IRIS_KEY, WINE_KEY}
    assert ds.blocked == {}
    assert ds.prune_safe
    iris_svc = ds.services[IRIS_KEY]
    assert iris_svc.manifest == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": "models", "labels": {"team": "ml"},
                     "annotations": {"serving.kserve.io/deploymentMode": "Serverless"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://bucket/iris/v2"}}},
    }
    assert iris_svc.policy.steps == [10, 20]
    assert iris_svc.policy_source == "pol/iris.yaml:1"
    assert iris_svc.source == "svc/iris.yaml:1"
    assert iris_svc.spec_hash == spec_hash(iris_svc.manifest)
    wine = ds.services[WINE_KEY]
    assert wine.policy_source == "default"
    assert wine.source == "svc/wine.yml:2"  # the document's first line, after the comment
    assert wine.manifest["metadata"]["namespace"] == "models"  # from default_namespace


def test_default_policy_is_the_one_given(tmp_path: Path) -> None:
    custom = PolicySpec.model_validate({"steps": [50]})
    ds = load(tmp_path, {"a.yaml": IRIS}, default_policy=custom)
    assert ds.services[IRIS_KEY].policy == custom


def test_v1alpha2_service(tmp_path: Path) -> None:
    doc = """\
apiVersion: serving.kubeflow.org/v1alpha2
kind: InferenceService
metadata: {name: flowers}
spec:
  default:
    predictor: {tensorflow: {storageUri: "gs://b/flowers"}}
"""
    tulips = doc.replace("flowers}", "tulips}") + "  canaryTrafficPercent: 10\n  canary: {}\n"
    ds = load(tmp_path, {"f.yaml": doc, "g.yaml": tulips})
    key = ServiceKey("default", "flowers")
    assert ds.services[key].manifest["apiVersion"] == "serving.kubeflow.org/v1alpha2"
    fields = {e.field for e in ds.problems if e.service == ServiceKey("default", "tulips")}
    assert {"spec.canaryTrafficPercent", "spec.canary"} <= fields


def test_duplicate_policies_block_the_service(tmp_path: Path) -> None:
    ds = load(tmp_path, {"svc.yaml": IRIS + "---\n" + WINE, "a.yaml": policy(), "b.yaml": policy()})
    dup = [e for e in ds.problems if e.field == "spec.target.name"]
    assert sorted(e.file for e in dup) == ["a.yaml", "b.yaml"]
    assert all("2 RolloutPolicies target models/iris" in e.message for e in dup)
    assert IRIS_KEY in ds.blocked and IRIS_KEY not in ds.services
    assert WINE_KEY in ds.services


def test_duplicate_services_block_the_service(tmp_path: Path) -> None:
    ds = load(tmp_path, {"a.yaml": IRIS, "b.yaml": IRIS.replace("v2", "v3"), "c.yaml": WINE})
    assert {(e.file, e.field) for e in ds.problems} == {("a.yaml", "metadata.name"), ("b.yaml", "metadata.name")}
    assert "defined 2 times" in ds.blocked[IRIS_KEY]
    assert set(ds.services) == {WINE_KEY}


def test_policy_for_missing_service_is_a_warning(tmp_path: Path) -> None:
    ds = load(tmp_path, {"svc.yaml": WINE, "pol.yaml": policy("ghost")})
    assert ds.problems == []
    [warning] = ds.warnings
    assert (warning.file, warning.line, warning.field, warning.service) == ("pol.yaml", 5, "spec.target.name", None)
    assert "no InferenceService models/ghost" in warning.message
    assert set(ds.services) == {WINE_KEY}


def test_policy_namespace_defaults_and_must_match_service(tmp_path: Path) -> None:
    pol = policy().replace(", namespace: models}", "}")  # no namespace: the default namespace
    ds = load(tmp_path, {"svc.yaml": IRIS, "pol.yaml": pol}, default_namespace="other")
    assert ds.services[IRIS_KEY].policy_source == "default"
    assert [w.message for w in ds.warnings] == [
        "no InferenceService other/iris in the config repo; this policy applies to nothing"
    ]
    ds = load(tmp_path, {"pol.yaml": pol}, default_namespace="models")
    assert ds.services[IRIS_KEY].policy_source == "pol.yaml:1"


def test_namespaces_outside_the_shard_are_refused(tmp_path: Path) -> None:
    other = WINE.replace("namespace: models", "namespace: team-b")
    ds = load(tmp_path, {"a.yaml": IRIS, "b.yaml": other}, namespaces={"models"})
    assert set(ds.services) == {IRIS_KEY}
    [err] = ds.problems
    assert err.service == ServiceKey("team-b", "wine")
    assert (err.file, err.line, err.field) == ("b.yaml", 5, "metadata.namespace")
    assert "not managed by this canaryd" in err.message


def test_yaml_syntax_error_loses_only_that_file(tmp_path: Path) -> None:
    broken = IRIS + "---\n" + WINE.replace("  name: wine", "  name: [wine")
    ds = load(tmp_path, {"a.yaml": broken, "b.yaml": IRIS.replace("iris", "cedar")})
    [err] = ds.problems
    assert (err.file, err.field) == ("a.yaml", "(yaml)")
    assert err.line in (13, 14) and "whole file is skipped" in err.message
    assert set(ds.services) == {ServiceKey("models", "cedar")}
    assert IRIS_KEY in ds.blocked  # parsed before the error: named, so not mistaken for deleted
    assert not ds.prune_safe  # wine could not be named


def test_unreadable_policy_file_holds_services_on_the_default_policy(tmp_path: Path) -> None:
    """A policy lost to a YAML error might have been any service's: the default must not replace it."""
    broken_policy = policy("wine", body="steps: [10, 20\n")
    ds = load(tmp_path, {"svc.yaml": IRIS + "---\n" + WINE, "pol/iris.yaml": policy(),
                         "pol/wine.yaml": broken_policy})
    assert IRIS_KEY in ds.services  # has its own valid policy
    assert WINE_KEY not in ds.services
    assert "default policy must not replace a broken one" in ds.blocked[WINE_KEY]


def test_policy_with_unreadable_target_holds_default_services_in_its_namespace(tmp_path: Path) -> None:
    pol = ("apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p, namespace: models}\n"
           "spec:\n  targt: {name: iris}\n")
    other_ns = IRIS.replace("namespace: models", "namespace: team-b")
    ds = load(tmp_path, {"svc.yaml": IRIS + "---\n" + other_ns, "pol.yaml": pol})
    assert IRIS_KEY in ds.blocked and IRIS_KEY not in ds.services
    assert ServiceKey("team-b", "iris") in ds.services
    assert any(e.field == "spec.targt" for e in ds.problems)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        levels.append(f"a{i}: &a{i} [{refs}]")
    bomb = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n" + textwrap.indent(
        "\n".join(levels), "  ") + "\n"
    started = time.monotonic()
    ds = load(tmp_path, {"bomb.yaml": bomb, "ok.yaml": IRIS})
    assert time.monotonic() - started < 2
    [err] = ds.problems
    assert err.file == "bomb.yaml" and "alias bomb" in err.message
    assert IRIS_KEY in ds.services


def test_small_aliases_and_merge_keys_are_fine(tmp_path: Path) -> None:
    doc = IRIS.replace("  predictor:\n", "  predictor:\n    <<: &common {minReplicas: 1}\n") + \
        "  transformer:\n    <<: *common\n    containers: []\n"
    ds = load(tmp_path, {"a.yaml": doc})
    assert ds.errors == []
    assert ds.services[IRIS_KEY].manifest["spec"]["transformer"] == {"minReplicas": 1, "containers": []}


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    ds = load(tmp_path, {"r.yaml": "a: &x [1, *x]\n", "ok.yaml": IRIS})
    [err] = ds.problems
    assert "recursive YAML alias" in err.message
    assert IRIS_KEY in ds.services


def test_large_file_is_refused(tmp_path: Path) -> None:
    big = "# " + "x" * MAX_FILE_BYTES + "\n"
    ds = load(tmp_path, {"big.yaml": big, "ok.yaml": IRIS})
    [err] = ds.problems
    assert (err.file, err.field) == ("big.yaml", "(file)") and "larger than" in err.message
    # the lost file may have held a policy: services on the default policy wait
    assert IRIS_KEY in ds.blocked


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    tree(tmp_path, {"ok.yaml": IRIS})
    (tmp_path / "latin1.yaml").write_bytes(b"a: \xe9\n")
    ds = load_desired(tmp_path)
    assert [e.file for e in ds.problems] == ["latin1.yaml"]
    assert IRIS_KEY in ds.services


def test_symlink_outside_repo_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(IRIS)
    repo = tree(tmp_path / "repo", {"ok.yaml": WINE})
    os.symlink(outside, repo / "link.yaml")
    ds = load_desired(repo)
    assert set(ds.services) == {WINE_KEY}
    assert [(e.file, e.field) for e in ds.problems] == [("link.yaml", "(file)")]


def test_paths_limit_what_is_read(tmp_path: Path) -> None:
    tree(tmp_path, {"prod/iris.yaml": IRIS, "dev/wine.yaml": WINE})
    ds = load_desired(tmp_path, paths=["prod"])
    assert set(ds.services) == {IRIS_KEY}
    ds = load_desired(tmp_path, paths=["../"])
    assert ds.services == {} and ds.problems[0].field == "(path)"
    ds = load_desired(tmp_path, paths=["prod", "renamed"])
    assert [str(e) for e in ds.problems] == ["renamed:1: (path): configured path does not exist in the repository"]
    assert not ds.prune_safe and set(ds.services) == {IRIS_KEY}


def test_errors_are_sorted_and_render_file_line_field(tmp_path: Path) -> None:
    pol = policy(body="steps: [0]\nanalysis:\n  failureLimit: 0")
    ds = load(tmp_path, {"b.yaml": pol, "a.yaml": IRIS.replace("name: iris", "name: Iris")})
    rendered = [str(e) for e in ds.problems]
    assert rendered == sorted(rendered)
    assert rendered[0].startswith("a.yaml:4: metadata.name: ")
    assert "b.yaml:6: spec.steps: step 0 is out of range" in rendered[1]
    assert rendered[2].startswith("b.yaml:8: spec.analysis.failureLimit: ")


def test_spec_hash_tracks_spec_labels_and_annotations_only() -> None:
    base = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "a", "namespace": "n", "labels": {"x": "1"}, "annotations": {}},
            "spec": {"predictor": {"a": 1, "b": [1, 2]}}}
    h = spec_hash(base)
    assert len(h) == 16 and int(h, 16) >= 0
    reordered = {**base, "spec": {"predictor": {"b": [1, 2], "a": 1}}}
    assert spec_hash(reordered) == h
    assert spec_hash({**base, "metadata": {**base["metadata"], "name": "other"}}) == h
    for changed in (
        {**base, "spec": {"predictor": {"a": 2, "b": [1, 2]}}},
        {**base, "metadata": {**base["metadata"], "labels": {"x": "2"}}},
        {**base, "metadata": {**base["metadata"], "annotations": {"k": "v"}}},
    ):
        assert spec_hash(changed) != h


def test_default_policy_file_equals_built_in_defaults() -> None:
    assert load_policy_file(REPO_ROOT / "policies" / "default.yaml") == PolicySpec()


def test_policy_file_with_target_or_errors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(policy())
    with pytest.raises(PolicyFileError, match=r"p.yaml:5: spec.target: must be absent"):
        load_policy_file(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text(policy(body="steps: [3, 2]").replace("  target: {name: iris}\n", ""))
    with pytest.raises(PolicyFileError, match=r"q.yaml:5: spec.steps: steps must increase"):
        load_policy_file(tmp_path / "q.yaml")
    (tmp_path / "r.yaml").write_text(IRIS)
    with pytest.raises(PolicyFileError, match="exactly one RolloutPolicy"):
        load_policy_file(tmp_path / "r.yaml")


# -- issue 13 item 6: bounded config errors -------------------------------------------------------------


def _isvc(name: str, labels: str) -> str:
    return IRIS.replace("name: iris", f"name: {name}").replace("  namespace: models\n",
                                                               f"  namespace: models\n  labels: {labels}\n")


def test_regression_config_error_texts_were_unbounded(tmp_path: Path) -> None:
    """Issue 13 item 6: values were quoted whole in error messages (a 900 KB label value made a 900 KB
    error, kept, logged and copied into the blocked reason), and a file with thousands of wrong values
    made thousands of errors. Each error is now bounded, and so is their number per file and commit."""
    huge = "x" * 900_000
    files = {
        "a-label.yaml": _isvc("iris", f'{{team: ["{huge}"]}}'),
        "b-name.yaml": IRIS.replace("name: iris", f"name: {huge}"),
        "c-key.yaml": WINE.replace("metadata:\n", f"metadata:\n  ? {huge}\n  : 1\n", 1),  # explicit: YAML caps
        # implicit keys at 1024 characters
        "d-many.yaml": _isvc("many", "{" + ", ".join(f"k{i}: {i}" for i in range(5000)) + "}"),
        "e-policy.yaml": policy("iris", body=f"steps: [10, 20]\n? {huge}\n: 1"),
    }
    ds = load(tmp_path, files)
    texts = [str(e) for e in ds.errors] + list(ds.blocked.values())
    assert max(len(t) for t in texts) <= 1600, max(len(t) for t in texts)
    assert sum(len(t) for t in texts) < 100_000, sum(len(t) for t in texts)  # was several MB
    many = [e for e in ds.errors if e.file == "d-many.yaml"]
    assert len(many) == MAX_ERRORS_PER_FILE + 1
    assert "... and 4980 more problems in this file" in many[-1].message
    assert many[-1].service == ServiceKey("models", "many") and many[-1].severity == "error"
    assert ds.problem_count >= 5000  # counted in full
    # (a 900 KB name names no service: Kubernetes names are at most 253 characters)
    assert set(ds.blocked) == {IRIS_KEY, WINE_KEY, ServiceKey("models", "many")}
    assert load(tmp_path / "m", {"d-many.yaml": files["d-many.yaml"]}).prune_safe  # capping changed no decision
    out = io.StringIO()
    assert run_validate(tree(tmp_path / "v", files), out=out) == 1
    assert len(out.getvalue()) < 100_000 and f"{ds.problem_count} error(s)" in out.getvalue()


def test_errors_are_capped_per_commit_too(tmp_path: Path) -> None:
    files = {f"f{i:03}.yaml": _isvc(f"s{i}", "{" + ", ".join(f"k{j}: {j}" for j in range(30)) + "}")
             for i in range(40)}
    ds = load(tmp_path, files)
    assert len(ds.errors) <= MAX_ERRORS + 1 and ds.problem_count == 40 * 30
    last = ds.errors[-1]
    assert last.field == "(more)" and "file(s) from here on" in last.message
    assert last.service is None and not ds.prune_safe  # left-out errors of several services: no pruning


def test_regression_reported_markers_of_old_commits_were_kept_forever() -> None:
    """The daemon kept a marker (holding the whole error text) for every error of every commit it ever
    saw; now only the current commit's are kept, and a commit's problems are reported once per commit."""
    from canaryd.daemon.runner import ReportedOnce

    seen = ReportedOnce()
    for commit in range(1000):
        for err in range(20):
            assert seen.first(f"c{commit}", f"error {err}")
            assert not seen.first(f"c{commit}", f"error {err}")
    assert len(seen) == 20
    assert seen.first("c0", "error 0")  # an old commit checked out again is reported again
