"""The published RolloutPolicy JSON Schema (issue 15): generated from the models, committed, described,
used by the chart for `defaultPolicy`, and accepting exactly what the shipped policies are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from canaryd.cli import main
from canaryd.schema import CHART_PREFIX, chart_definitions, policy_schema, render

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "schemas" / "rolloutpolicy.schema.json"
POLICIES = sorted((ROOT / "policies").rglob("*.yaml"))


def test_the_committed_schema_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == render(), (
        "schemas/rolloutpolicy.schema.json is stale: run `canaryd schema > schemas/rolloutpolicy.schema.json`")


def test_canaryd_schema_prints_it() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output) == policy_schema()


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"/{name}", p) for name, p in schema.get("properties", {}).items()]
    for model, d in schema.get("definitions", {}).items():
        found += [(f"{model}.{name}", p) for name, p in d.get("properties", {}).items()]
    return found


def test_every_field_has_a_description() -> None:
    props = _properties(policy_schema())
    assert len(props) > 40
    missing = [where for where, p in props if not str(p.get("description", "")).strip()]
    assert missing == [], f"fields without a description: {missing}"


def test_the_charts_default_policy_uses_the_same_definitions() -> None:
    values = json.loads((ROOT / "charts" / "canaryd" / "values.schema.json").read_text())
    ours = {k: v for k, v in values["definitions"].items() if k.startswith(CHART_PREFIX)}
    assert ours == chart_definitions(), "values.schema.json's policy definitions are stale (see canaryd.schema)"
    assert {"$ref": f"#/definitions/{CHART_PREFIX}PolicySpec"} in values["properties"]["defaultPolicy"]["allOf"]


@pytest.mark.parametrize("path", POLICIES, ids=[p.relative_to(ROOT).as_posix() for p in POLICIES])
def test_shipped_policies_match_the_schema(path: Path) -> None:
    jsonschema.Draft7Validator(policy_schema()).validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d["spec"].update(steps=["ten"]), ["spec", "steps", 0]),
    (lambda d: d["spec"].update(step=[10]), ["spec"]),
    (lambda d: d["spec"]["analysis"].update(mode="bayes"), ["spec", "analysis", "mode"]),
    (lambda d: d["spec"]["analysis"].update(minRequests=0), ["spec", "analysis", "minRequests"]),
    (lambda d: d.update(kind="Rollout"), ["kind"]),
])
def test_a_wrong_field_is_found_at_its_path(change: Any, where: list[object]) -> None:
    doc = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    change(doc)
    errors = list(jsonschema.Draft7Validator(policy_schema()).iter_errors(doc))
    assert errors and any(list(e.absolute_path) == where for e in errors), [(list(e.absolute_path), e.message)
                                                                          for e in errors]
