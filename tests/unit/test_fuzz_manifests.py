"""Property-based fuzzing of InferenceService manifests in a config repo of several services (hypothesis,
derandomized).

Each generated document is a valid InferenceService (KServe v1beta1 or KFServing v1alpha2) with one fault
put in on purpose, so it is known to be bad and where. The real desired-state computation runs over the
whole repo for each one and must not raise, must report an error whose `file:line: field: message` text
names the file and the faulty field, must not roll the service out, must not let a prune delete it (its
service is blocked, or the set says it is not prune-safe), and must leave every other service's desired
state exactly as it was.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canaryd.desired import DesiredSet, ServiceKey, load_desired
from canaryd.manifests import OBJECT_META_FIELDS, V1ALPHA2, V1BETA1, render_path
from tests.unit.fuzz_support import FuzzPath, delete_at, dump, get_at, set_at

BAD_FILE = "services/iris.yaml"
IRIS = ServiceKey("models", "iris")
OTHERS = (ServiceKey("models", "wine"), ServiceKey("models", "cedar"))
EXAMPLES = 520
MIN_BAD_DOCUMENTS = 500
MODE = "serving.kserve.io/deploymentMode"

V1B: dict[str, Any] = {
    "apiVersion": V1BETA1,
    "kind": "InferenceService",
    "metadata": {"name": "iris", "namespace": "models", "labels": {"team": "ml", "tier": "gold"},
                 "annotations": {MODE: "Serverless", "note": "fuzz"}},
    "spec": {
        "predictor": {"minReplicas": 1, "maxReplicas": 3,
                      "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://b/iris/v2",
                                "resources": {"limits": {"cpu": "1", "memory": "2Gi"}}}},
        "transformer": {"containers": [{"name": "kserve-container", "image": "example/tx:v1",
                                        "env": [{"name": "A", "value": "1"}]}]},
    },
}
V1A: dict[str, Any] = {
    "apiVersion": V1ALPHA2,
    "kind": "InferenceService",
    "metadata": {"name": "iris", "namespace": "models", "labels": {"team": "ml"}, "annotations": {"note": "x"}},
    "spec": {"default": {"predictor": {"sklearn": {"storageUri": "gs://b/iris/v2"}, "minReplicas": 1},
                         "transformer": {"custom": {"container": {"image": "example/tx:v1"}}}}},
}
BASES = {"v1beta1": V1B, "v1alpha2": V1A}


def other(name: str, api: str) -> str:
    doc = copy.deepcopy(BASES[api])
    doc["metadata"]["name"] = name
    return dump(doc) + (
        "---\napiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\n"
        f"metadata: {{name: {name}, namespace: models}}\nspec: {{target: {{name: {name}}}, steps: [20, 60]}}\n")


def write_repo(root: Path) -> Path:
    files = {"services/wine.yaml": other("wine", "v1beta1"), "services/cedar.yaml": other("cedar", "v1alpha2"),
             BAD_FILE: dump(V1B)}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@dataclass(frozen=True)
class Fault:
    kind: str
    api: str
    text: str
    field: str
    unnamed: bool = False  # the fault makes the document's service unknowable (name or namespace unreadable)


def fault(kind: str, api: str, doc: dict[str, Any], path: FuzzPath, unnamed: bool = False) -> Fault:
    return Fault(kind, api, dump(doc), render_path(path), unnamed)


apis = st.sampled_from(sorted(BASES))
scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.booleans(), st.text(max_size=12), st.none())
not_str = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.booleans(), st.lists(st.integers(0, 9), min_size=1, max_size=3),
                    st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(), min_size=1, max_size=2))
not_mapping = st.one_of(st.integers(), st.text(min_size=1, max_size=8), st.lists(st.integers(), max_size=2),
                        st.booleans())
key_text = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-."), min_size=1, max_size=16)


def bad_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.sampled_from("abcXYZ019-_.@ "), min_size=1, max_size=20),
        st.text(st.sampled_from("abc"), min_size=64, max_size=80),
        st.sampled_from(["", "9lives", "-iris", "iris-", "Iris", "iris_2", "iris.v2", "ïris"]),
    ).filter(lambda n: not (len(n) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n)))


def bad_namespaces() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.sampled_from("abcXYZ019-_.@ "), min_size=1, max_size=20),
        st.text(st.sampled_from("abc"), min_size=64, max_size=80),
        st.sampled_from(["", "-models", "models-", "Models", "models_a", "models.a"]),
    ).filter(lambda n: not (len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n)))


def metadata_faults() -> st.SearchStrategy[Fault]:
    def unknown(api: str, key: str, value: Any) -> Fault:
        return fault("unknown-key", api, set_at(BASES[api], ("metadata", key), value), ("metadata", key))

    return st.one_of(
        st.tuples(apis, key_text.filter(lambda k: k not in OBJECT_META_FIELDS), scalars).map(lambda t: unknown(*t)),
        st.tuples(apis, bad_names()).map(lambda t: fault(
            "bad-name", t[0], set_at(BASES[t[0]], ("metadata", "name"), t[1]), ("metadata", "name"),
            unnamed=t[1] == "")),
        st.tuples(apis, not_str | st.none()).map(lambda t: fault(
            "wrong-type", t[0], set_at(BASES[t[0]], ("metadata", "name"), t[1]), ("metadata", "name"), unnamed=True)),
        st.tuples(apis, bad_namespaces()).map(lambda t: fault(
            "bad-namespace", t[0], set_at(BASES[t[0]], ("metadata", "namespace"), t[1]), ("metadata", "namespace"),
            unnamed=True)),
        st.tuples(apis, not_str).map(lambda t: fault(
            "wrong-type", t[0], set_at(BASES[t[0]], ("metadata", "namespace"), t[1]), ("metadata", "namespace"),
            unnamed=True)),
        st.tuples(apis, st.sampled_from(["labels", "annotations"]), not_mapping).map(lambda t: fault(
            "wrong-type", t[0], set_at(BASES[t[0]], ("metadata", t[1]), t[2]), ("metadata", t[1]))),
        st.tuples(apis, key_text, not_str | st.none()).map(lambda t: fault(
            "wrong-type", t[0], set_at(BASES[t[0]], ("metadata", "labels", t[1]), t[2]), ("metadata", "labels", t[1]))),
        st.tuples(apis, st.integers(0, 99), st.text(max_size=5)).map(lambda t: fault(
            "wrong-type", t[0], set_at(BASES[t[0]], ("metadata", "annotations", t[1]), t[2]),
            ("metadata", "annotations", str(t[1])))),
        st.tuples(apis, st.text(max_size=15).filter(lambda m: m not in ("Serverless", "Knative"))).map(lambda t: fault(
            "raw-deployment", t[0], set_at(BASES[t[0]], ("metadata", "annotations", MODE), t[1]),
            ("metadata", "annotations", MODE))),
        st.tuples(apis, not_mapping | st.none()).map(lambda t: fault(
            "wrong-type", t[0], set_at(BASES[t[0]], ("metadata",), t[1]), ("metadata",), unnamed=True)),
    )


def spec_faults() -> st.SearchStrategy[Fault]:
    pct = st.one_of(st.integers(0, 100), st.floats(0, 100), st.text(max_size=4))
    components = st.sampled_from(["predictor", "transformer", "explainer"])

    def percent_v1b(component: str, value: Any) -> Fault:
        doc = copy.deepcopy(V1B)
        doc["spec"].setdefault(component, {})["canaryTrafficPercent"] = value
        return fault("owned-field", "v1beta1", doc, ("spec", component, "canaryTrafficPercent"))

    def percent_v1a(where: FuzzPath, value: Any) -> Fault:
        doc = copy.deepcopy(V1A)
        get_at(doc, where[:-1])[where[-1]] = value
        return fault("owned-field", "v1alpha2", doc, where)

    return st.one_of(
        st.tuples(apis, not_mapping | st.none()).map(lambda t: fault(
            "wrong-type", t[0], set_at(BASES[t[0]], ("spec",), t[1]), ("spec",))),
        st.just(fault("missing", "v1beta1", delete_at(V1B, ("spec",)), ("spec",))),
        st.just(fault("missing", "v1beta1", delete_at(V1B, ("spec", "predictor")), ("spec", "predictor"))),
        not_mapping.map(lambda v: fault("wrong-type", "v1beta1", set_at(V1B, ("spec", "predictor"), v),
                                        ("spec", "predictor"))),
        st.tuples(components, pct).map(lambda t: percent_v1b(*t)),
        pct.map(lambda v: percent_v1a(("spec", "canaryTrafficPercent"), v)),
        pct.map(lambda v: percent_v1a(("spec", "default", "predictor", "canaryTrafficPercent"), v)),
        st.just(fault("owned-field", "v1alpha2", set_at(V1A, ("spec", "canary"), V1A["spec"]["default"]),
                      ("spec", "canary"))),
        st.just(fault("missing", "v1alpha2", delete_at(V1A, ("spec", "default")), ("spec", "default", "predictor"))),
        not_mapping.map(lambda v: fault("wrong-type", "v1alpha2", set_at(V1A, ("spec", "default", "predictor"), v),
                                        ("spec", "default", "predictor"))),
        # what JSON (the API server) cannot take, deep in the spec: the error names that field
        st.tuples(apis, st.sampled_from([math.nan, math.inf, -math.inf])).map(lambda t: fault(
            "not-json", t[0], set_at(BASES[t[0]], leaf(t[0]), t[1]), leaf(t[0]))),
    )


def leaf(api: str) -> FuzzPath:
    return ("spec", "predictor", "minReplicas") if api == "v1beta1" else \
        ("spec", "default", "predictor", "minReplicas")


def version_faults() -> st.SearchStrategy[Fault]:
    versions = st.one_of(
        st.sampled_from(["serving.kserve.io/v1alpha1", "serving.kserve.io/v1", "serving.kubeflow.org/v1beta1",
                         "serving.kserv.io/v1beta1", "kserve.io/v1beta1", "v1", "", "serving.kserve.io"]),
        st.text(max_size=25).filter(lambda v: v not in (V1BETA1, V1ALPHA2) and not v.startswith("canaryd.io")),
        not_str,
    )
    kinds = st.sampled_from(["InferenceSevice", "Inferenceservice", "InferenceServices", "inferenceservice",
                             "InfrenceService", "InferenceService "])
    return st.one_of(
        st.tuples(apis, versions).map(lambda t: fault(
            "bad-version", t[0], set_at(BASES[t[0]], ("apiVersion",), t[1]), ("apiVersion",))),
        st.just(fault("bad-version", "v1beta1", delete_at(V1B, ("apiVersion",)), ("apiVersion",))),
        st.tuples(apis, kinds).map(lambda t: fault("kind-typo", t[0], set_at(BASES[t[0]], ("kind",), t[1]), ("kind",))),
    )


def yaml_faults() -> st.SearchStrategy[Fault]:
    """Duplicate keys (YAML would keep only the last) and values no YAML constructor can build."""
    out: list[st.SearchStrategy[Fault]] = []
    for api, base in BASES.items():
        text = dump(base)
        lines = text.splitlines(keepends=True)
        dups: list[tuple[int, FuzzPath]] = []

        def walk(node: yaml.Node, path: FuzzPath, lines: list[str] = lines, dups: list[tuple[int, FuzzPath]] = dups
                 ) -> None:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(v, yaml.ScalarNode) and not lines[k.start_mark.line].lstrip().startswith("- "):
                        dups.append((k.start_mark.line, (*path, k.value)))
                    walk(v, (*path, k.value))
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    walk(item, (*path, i))

        walk(yaml.compose(text), ())

        def dup(choice: tuple[int, FuzzPath], api: str = api, lines: list[str] = lines) -> Fault:
            n, path = choice
            return Fault("duplicate-key", api, "".join([*lines[: n + 1], lines[n], *lines[n + 1:]]), render_path(path))

        scalar_lines = [i for i, ln in enumerate(lines) if re.match(r"^\s*[A-Za-z][A-Za-z/.]*: \S", ln)]

        def unconstructible(t: tuple[int, str], api: str = api, lines: list[str] = lines) -> Fault:
            i, value = t
            key = lines[i].split(":", 1)[0]
            return Fault("unconstructible", api, "".join([*lines[:i], f"{key}: {value}\n", *lines[i + 1:]]),
                         "(yaml)", unnamed=True)

        out.append(st.sampled_from(dups).map(dup))
        out.append(st.tuples(st.sampled_from(scalar_lines), st.sampled_from(
            ["2024-13-01", "!!int abc", "!!bool maybe", "!!float x", "!!timestamp nope", "9" * 4400,
             "!!python/object/apply:os.system [ls]", "[unclosed", "{a: 1", "'unterminated", "*undefined"],
        )).map(unconstructible))
    return st.one_of(out)


def unknown_in_spec() -> st.SearchStrategy[Fault]:
    """Keys of the spec that KServe does not know are passed on (its webhook judges them): not a fault
    canaryd reports. A YAML `!!set`/`!!binary` value there is, since JSON cannot carry it."""
    return st.tuples(apis, st.sampled_from(["!!set {a, b}", "!!binary aGVsbG8="]), key_text).map(
        lambda t: Fault("not-json", t[0], dump(BASES[t[0]]).replace(
            "spec:\n", f"spec:\n  {t[2]}x: {t[1]}\n", 1), render_path(("spec", t[2] + "x"))))


# One kind first, then a fault of that kind (a flat one_of would weigh kinds by their number of branches).
FAULTS = st.sampled_from([metadata_faults(), spec_faults(), version_faults(), yaml_faults(),
                          unknown_in_spec()]).flatmap(lambda kind: kind)


def check(ds: DesiredSet, base: DesiredSet, f: Fault) -> None:
    mine = [e for e in ds.problems if e.file == BAD_FILE]
    assert mine, f"no error for {f.kind} at {f.field}:\n{f.text}"
    for err in mine:
        assert str(err).startswith(f"{BAD_FILE}:{err.line}: {err.field}: ")
    if f.field == "(yaml)":
        assert any(e.field == "(yaml)" for e in mine), mine
    else:
        assert any(e.field == f.field for e in mine), (
            f"{f.kind}: expected {f.field!r} in\n" + "\n".join(map(str, mine)) + f"\n---\n{f.text}")
    assert IRIS not in ds.services, f"{f.kind} at {f.field}: the broken iris would be rolled out"
    assert IRIS in ds.blocked or (f.unnamed and not ds.prune_safe) or f.kind in ("bad-name",), (
        f"{f.kind} at {f.field}: iris neither blocked nor protected from prune")
    for key in OTHERS:
        assert ds.services.get(key) == base.services[key], f"{key} changed by a bad {BAD_FILE}"
    assert not [e for e in ds.problems if e.file != BAD_FILE], "errors elsewhere"


def test_generated_bad_manifests_are_reported_and_contained(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo")
    base = load_desired(root)
    assert base.errors == [] and set(base.services) == {IRIS, *OTHERS}
    bad_file = root / BAD_FILE
    bad_file.write_text(dump(V1A))
    assert load_desired(root).errors == []  # both unmutated documents are valid
    seen: set[str] = set()
    kinds: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(FAULTS)
    def one(f: Fault) -> None:
        bad_file.write_text(f.text)
        check(load_desired(root), base, f)
        if f.text not in seen:
            seen.add(f.text)
            kinds[f.kind] += 1

    one()
    print(f"bad manifests: {len(seen)} distinct, by kind {dict(kinds)}")
    assert len(seen) >= MIN_BAD_DOCUMENTS
    assert len(kinds) >= 9


# ---------------------------------------------------------------------------------------------------
# regressions found by the fuzzer


def test_regression_mistyped_api_group_is_an_error_not_a_silently_ignored_document(tmp_path: Path) -> None:
    """Defect: `apiVersion: serving.kserv.io/v1beta1` (or a kind typo) made classify() ignore the document,
    so the service silently left the desired state, with no error (and prune would delete it)."""
    root = write_repo(tmp_path / "repo")
    for changed, field in ((set_at(V1B, ("apiVersion",), "serving.kserv.io/v1beta1"), "apiVersion"),
                           (set_at(V1B, ("kind",), "InferenceSevice"), "kind")):
        (root / BAD_FILE).write_text(dump(changed))
        ds = load_desired(root)
        [err] = ds.problems
        assert (err.file, err.line, err.field) == (BAD_FILE, 1 if field == "apiVersion" else 2, field)
        assert IRIS in ds.blocked and IRIS not in ds.services


def test_other_kserve_kinds_are_still_ignored(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo")
    (root / "runtime.yaml").write_text("apiVersion: serving.kserve.io/v1alpha1\nkind: ServingRuntime\n"
                                       "metadata: {name: rt}\nspec: {}\n")
    assert load_desired(root).errors == []


def test_regression_namespace_of_the_wrong_type_does_not_make_the_service_prunable(tmp_path: Path) -> None:
    """Defect: `namespace: [models]` filed the broken service under the *default* namespace, so models/iris
    looked deleted from Git and the set was prune-safe: with `prune: true` canaryd would delete it."""
    root = write_repo(tmp_path / "repo")
    (root / BAD_FILE).write_text(dump(set_at(V1B, ("metadata", "namespace"), ["models"])))
    ds = load_desired(root, default_namespace="default")
    assert [(e.field, e.service) for e in ds.problems] == [("metadata.namespace", None)]
    assert not ds.prune_safe and ServiceKey("default", "iris") not in ds.blocked


def test_regression_non_json_value_is_reported_at_its_field(tmp_path: Path) -> None:
    """Was `spec: cannot be sent as JSON: Out of range float values...`: now the field itself."""
    root = write_repo(tmp_path / "repo")
    (root / BAD_FILE).write_text(dump(V1B).replace("minReplicas: 1", "minReplicas: .nan"))
    [err] = load_desired(root).problems
    assert str(err) == (f"{BAD_FILE}:14: spec.predictor.minReplicas: nan cannot be sent as JSON"
                        " (Kubernetes takes finite numbers only)")


def test_regression_broken_manifest_in_an_unmanaged_namespace_is_not_blocked_there(tmp_path: Path) -> None:
    """Defect: a broken manifest for a namespace this canaryd does not manage was "blocked" under its key,
    and the daemon writes an InvalidConfig Warning Event for each blocked service: into that namespace."""
    root = write_repo(tmp_path / "repo")
    doc = set_at(set_at(V1B, ("metadata", "namespace"), "team-b"), ("spec", "predictor", "canaryTrafficPercent"), 5)
    (root / "services/team-b.yaml").write_text(dump(doc))
    ds = load_desired(root, namespaces=["models"])
    assert ServiceKey("team-b", "iris") not in ds.blocked
    assert sorted((str(e) for e in ds.problems), key=lambda e: int(e.split(":")[1])) == [
        "services/team-b.yaml:5: metadata.namespace: namespace 'team-b' is not managed by this canaryd"
        " (kubernetes.namespaces: models); refused: nothing is applied or written there",
        "services/team-b.yaml:24: spec.predictor.canaryTrafficPercent: is owned by canaryd, which sets the"
        " traffic split itself during a rollout; remove it from Git",
    ]
    assert set(ds.services) == {IRIS, *OTHERS}
