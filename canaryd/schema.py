"""The RolloutPolicy JSON Schema: generated from the pydantic models canaryd validates with, so the schema an
editor checks a policy against can never disagree with the daemon about a field's name, type or range.

Draft-07 (what Helm validates `values.schema.json` with, and what yaml-language-server reads), with the
models under `definitions`. The schema checks shape and ranges; rules across fields (steps strictly
increasing, `maxIncrease` only for error-rate, placeholders in queries) are the daemon's: `canaryd
validate` reports them with file, line and field.

    canaryd schema > schemas/rolloutpolicy.schema.json   # the committed copy; a test keeps it current
"""

from __future__ import annotations

import json
from typing import Any

from canaryd.policy import RolloutPolicy

SCHEMA_ID = "https://canaryd.io/schemas/rolloutpolicy.schema.json"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
#: Prefix of the policy models among the chart's own definitions in values.schema.json.
CHART_PREFIX = "policy."


def policy_schema() -> dict[str, Any]:
    """The schema of a whole RolloutPolicy document (apiVersion, kind, metadata, spec)."""
    schema = _generated("")
    return {"$schema": DRAFT_07, "$id": SCHEMA_ID, "title": "canaryd RolloutPolicy",
            "description": "A canaryd rollout policy (canaryd.io/v1alpha1). See the README's policy reference.",
            **{k: v for k, v in schema.items() if k not in ("$defs", "title")},
            "definitions": schema["$defs"]}


def chart_definitions() -> dict[str, Any]:
    """The policy models for the chart's values.schema.json `definitions` (prefixed with CHART_PREFIX)."""
    return dict(_generated(CHART_PREFIX)["$defs"])


def render() -> str:
    return json.dumps(policy_schema(), indent=2, sort_keys=True) + "\n"


def _generated(prefix: str) -> dict[str, Any]:
    schema = RolloutPolicy.model_json_schema(by_alias=True, ref_template="#/definitions/" + prefix + "{model}")
    schema["$defs"] = {prefix + name: _drop_titles(d) for name, d in schema["$defs"].items()}
    cleaned: dict[str, Any] = _drop_titles(schema)
    return cleaned


def _drop_titles(node: Any) -> Any:
    """Pydantic titles repeat the field name ("Minrequests"); editors show the description instead."""
    if isinstance(node, dict):
        return {k: _drop_titles(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str) and "properties" not in node)}
    if isinstance(node, list):
        return [_drop_titles(v) for v in node]
    return node
