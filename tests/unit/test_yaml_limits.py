"""Hostile and absurd YAML in the config repo: every limit of canaryd.yamlsafe refuses its document with
a clear `file:line: field: message` that names the limit, within bounded memory, and the other services
of the repo load as if the bad file were not there."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from canaryd import desired as desired_module
from canaryd.desired import (
    MAX_ALIAS_EXPANSION,
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_REPO_BYTES,
    MAX_REPO_FILES,
    DesiredSet,
    PolicyFileError,
    ServiceKey,
    load_desired,
    load_policy_file,
    repo_size_problem,
)
from canaryd.validate import run_validate

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVICE = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: {name}, namespace: models}}
spec:
  predictor: {{model: {{modelFormat: {{name: sklearn}}, storageUri: "gs://b/{name}/v1"}}}}
"""
POLICY = """\
apiVersion: canaryd.io/v1alpha1
kind: RolloutPolicy
metadata: {{name: {name}, namespace: models}}
spec:
  target: {{name: {name}}}
  steps: [10, 50]
"""
OTHERS = ("wine", "cedar")


def repo(root: Path, extra: dict[str, str | bytes]) -> Path:
    """Two good services with their own policies, plus `extra` files."""
    files: dict[str, str | bytes] = {}
    for name in OTHERS:
        files[f"services/{name}.yaml"] = SERVICE.format(name=name)
        files[f"policies/{name}.yaml"] = POLICY.format(name=name)
    files.update(extra)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def baseline(tmp_path: Path) -> DesiredSet:
    return load_desired(repo(tmp_path / "baseline", {}))


def assert_others_untouched(ds: DesiredSet, base: DesiredSet) -> None:
    for name in OTHERS:
        key = ServiceKey("models", name)
        assert ds.services[key] == base.services[key], f"{key} changed"
        assert key not in ds.blocked


def refusal(ds: DesiredSet, file: str) -> str:
    """The one error of `file`, rendered as `file:line: field: message`."""
    [err] = [e for e in ds.problems if e.file == file]
    text = str(err)
    assert text.startswith(f"{file}:{err.line}: {err.field}: ")
    return text


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    """The classic: each level a list of `width` aliases of the previous one (width**levels strings)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return ("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: lol, namespace: models}\n"
            "spec:\n  predictor:\n" + textwrap.indent("\n".join(lines), "    ") + "\n")


def test_billion_laughs_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    base = baseline(tmp_path)
    root = repo(tmp_path / "r", {"services/lol.yaml": billion_laughs()})  # 10**10 strings once expanded
    tracemalloc.start()
    started = time.process_time()
    try:
        ds = load_desired(root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.process_time() - started < 5
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    text = refusal(ds, "services/lol.yaml")
    assert "(yaml)" in text and "alias" in text and f"limit: {MAX_ALIASES} aliases per file" not in text
    assert f"limit: {MAX_ALIAS_EXPANSION} nodes added by aliases" in text and "alias bomb" in text
    assert_others_untouched(ds, base)
    assert ServiceKey("models", "lol") not in ds.services


def test_too_many_alias_references_are_refused(tmp_path: Path) -> None:
    refs = ", ".join(["*x"] * (MAX_ALIASES + 1))  # each alias adds one node: far below the expansion limit
    doc = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: m}}\ndata:\n  x: &x 1\n  y: [{refs}]\n"
    ds = load_desired(repo(tmp_path, {"many-aliases.yaml": doc}))
    text = refusal(ds, "many-aliases.yaml")
    assert text.startswith("many-aliases.yaml:6: (yaml): ")
    assert f"more than {MAX_ALIASES} YAML alias references" in text and f"limit: {MAX_ALIASES} aliases" in text


def test_nesting_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    deep = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    block = "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5))
    ok = "a: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "\n"  # the document itself is one level
    ds = load_desired(repo(tmp_path, {"deep.yaml": deep, "block.yaml": block, "ok.yaml": ok}))
    assert f"limit: {MAX_DEPTH} levels" in refusal(ds, "deep.yaml")
    assert refusal(ds, "block.yaml").startswith(f"block.yaml:{MAX_DEPTH}: (yaml): YAML nested deeper than")
    assert not [e for e in ds.problems if e.file == "ok.yaml"]


def test_nesting_through_aliases_counts_too(tmp_path: Path) -> None:
    """Each anchor nests the previous one: few nodes, few aliases, but 30 x 5 levels once expanded."""
    lines = ["l0: &l0 [[[[[1]]]]]"] + [f"l{i}: &l{i} [[[[[*l{i - 1}]]]]]" for i in range(1, 30)]
    ds = load_desired(repo(tmp_path, {"chain.yaml": "\n".join(lines) + "\n"}))
    text = refusal(ds, "chain.yaml")
    assert "aliases nest this document" in text and f"limit: {MAX_DEPTH} levels" in text


def test_too_many_nodes_in_one_file(tmp_path: Path) -> None:
    doc = "items: [" + ",".join(["1"] * (MAX_NODES + 10)) + "]\n"
    assert len(doc) < MAX_FILE_BYTES
    ds = load_desired(repo(tmp_path, {"huge-list.yaml": doc}))
    assert f"more than {MAX_NODES} YAML nodes in this file (limit: {MAX_NODES} nodes per file)" in refusal(
        ds, "huge-list.yaml")


def test_node_limit_bounds_memory(tmp_path: Path) -> None:
    """The worst file under the size limit: a megabyte of tiny nodes. It is refused at the node limit, and
    the process grows by less than 50 MiB doing so (peak RSS of a child, untraced: tracemalloc would slow
    the parse tenfold)."""
    root = repo(tmp_path, {"tiny-nodes.yaml": "- x\n" * ((MAX_FILE_BYTES - 1) // 4)})
    child = textwrap.dedent("""\
        import json, resource, sys
        from pathlib import Path
        from canaryd.desired import load_desired
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ds = load_desired(Path(sys.argv[1]))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"grew_kib": after - before, "errors": [str(e) for e in ds.problems]}))
        """)
    out = subprocess.run([sys.executable, "-c", child, str(root)], capture_output=True, text=True, timeout=120,
                         check=True, cwd=REPO_ROOT)
    result = json.loads(out.stdout)
    [error] = result["errors"]
    assert error.startswith("tiny-nodes.yaml:50000: (yaml): more than 50000 YAML nodes in this file")
    assert result["grew_kib"] < 50 * 1024, f"grew by {result['grew_kib'] / 1024:.1f} MiB"


def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    base = baseline(tmp_path)
    ds = load_desired(repo(tmp_path / "r", {"big.yaml": "# " + "x" * MAX_FILE_BYTES + "\n"}))
    assert refusal(ds, "big.yaml") == (f"big.yaml:1: (file): file is {MAX_FILE_BYTES + 3} bytes, larger than the"
                                       f" {MAX_FILE_BYTES}-byte limit; the whole file is skipped")
    assert_others_untouched(ds, base)  # they have policies of their own, so nothing holds them


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_yaml_is_not_opened(tmp_path: Path) -> None:
    root = repo(tmp_path, {})
    os.mkfifo(root / "pipe.yaml")  # opening it for reading would block forever
    ds = load_desired(root)
    assert refusal(ds, "pipe.yaml") == "pipe.yaml:1: (file): not a regular file; the whole file is skipped"


# ---------------------------------------------------------------------------------------------------
# defect: PyYAML's constructors raise ValueError/KeyError/AttributeError, which escaped load_desired
# (one file with `2024-13-01` in it stopped the whole desired state from loading)


@pytest.mark.parametrize(("value", "says"), [
    ("2024-13-01", "month must be in 1..12"),
    ("2024-02-30 10:00:00", "day is out of range"),
    ("1" * 5000, "as a YAML int"),
    ("!!timestamp garbage", "'garbage' as a YAML timestamp"),
    ("!!int abc", "'abc' as a YAML int"),
    ("!!float x", "'x' as a YAML float"),
    ("!!bool maybe", "'maybe' as a YAML bool"),
])
def test_regression_unconstructible_yaml_value_is_a_file_error_not_a_crash(
        tmp_path: Path, value: str, says: str) -> None:
    base = baseline(tmp_path)
    svc = SERVICE.format(name="iris") + f"  labels: {{built: {value}}}\n"
    ds = load_desired(repo(tmp_path / "r", {"services/iris.yaml": svc}))
    text = refusal(ds, "services/iris.yaml")
    assert text.startswith("services/iris.yaml:6: (yaml): YAML error: cannot read ")
    assert says in text and "quote it to make it a string" in text and len(text) < 400
    assert_others_untouched(ds, base)


def test_regression_unconstructible_value_in_the_default_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_text("apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: d}\n"
                    "spec: {interval: !!int one}\n")
    with pytest.raises(PolicyFileError, match=r"default.yaml:4: \(yaml\): YAML error: cannot read 'one'"):
        load_policy_file(path)


# ---------------------------------------------------------------------------------------------------
# the repo as a whole


def test_too_many_files_refuse_the_whole_tree(tmp_path: Path) -> None:
    root = repo(tmp_path, {})
    many = root / "many"
    many.mkdir()
    for i in range(MAX_REPO_FILES):
        (many / f"f{i:05}.yaml").write_bytes(b"")
    ds = load_desired(root)
    [err] = ds.problems
    assert err.field == "(repo)" and f"limit: {MAX_REPO_FILES} files per repo" in str(err)
    assert ds.services == {} and not ds.prune_safe  # nothing is deleted for having "left Git"
    assert repo_size_problem(root) is not None and repo_size_problem(root, ["services"]) is None


def test_too_many_bytes_refuse_the_whole_tree(tmp_path: Path) -> None:
    root = repo(tmp_path, {})
    chunk = b"# " + b"x" * (MAX_FILE_BYTES - 3) + b"\n"  # each file just under the per-file limit
    for i in range(MAX_REPO_BYTES // MAX_FILE_BYTES + 1):
        (root / f"filler-{i}.yaml").write_bytes(chunk)
    ds = load_desired(root)
    [err] = ds.problems
    assert err.field == "(repo)" and f"limit: {MAX_REPO_BYTES} bytes per repo" in str(err)
    assert ds.services == {} and not ds.prune_safe


def test_repo_node_budget_refuses_the_whole_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(desired_module, "MAX_REPO_NODES", 200)  # a small budget: the mechanism, not its size
    root = repo(tmp_path, {f"more/s{i}.yaml": SERVICE.format(name=f"s{i}") for i in range(20)})
    ds = load_desired(root)
    [err] = ds.problems
    assert err.field == "(repo)" and "limit: 200 nodes per repo" in str(err) and err.file.startswith("more/")
    assert ds.services == {} and not ds.prune_safe


def test_validate_prints_the_limit(tmp_path: Path) -> None:
    root = repo(tmp_path, {"services/lol.yaml": billion_laughs()})
    out = io.StringIO()
    assert run_validate(root, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("services/lol.yaml:1: (yaml): YAML aliases expand this document by")
    assert lines[-1] == "1 error(s), 0 warning(s); 2 service(s) ready to roll out"
