"""Config-repo documents for the sandbox: the InferenceService and RolloutPolicy YAML the demo, the
benches and the end-to-end tests commit. One builder each, so every caller writes the same shape."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml


def isvc_yaml(name: str, ns: str, uri: str, extra_predictor: str = "", labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> str:
    """A v1beta1 InferenceService serving the sklearn model at `uri` (`extra_predictor`: more YAML lines
    for the predictor, e.g. `minReplicas: 2`)."""
    meta = ""
    for key, values in (("labels", labels), ("annotations", annotations)):
        if values:
            meta += f"  {key}:\n" + "".join(f'    {k}: "{v}"\n' for k, v in values.items())
    body = textwrap.dedent(f"""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata:
          name: {name}
          namespace: {ns}
        """) + meta + textwrap.dedent(f"""\
        spec:
          predictor:
            model:
              modelFormat: {{name: sklearn}}
              storageUri: {uri}
        """)
    if extra_predictor:
        body += textwrap.indent(textwrap.dedent(extra_predictor), "    ")
    return body


def kfserving_yaml(name: str, ns: str, uri: str) -> str:
    """A KFServing v1alpha2 InferenceService whose default endpoint serves the sklearn model at `uri`."""
    return textwrap.dedent(f"""\
        apiVersion: serving.kubeflow.org/v1alpha2
        kind: InferenceService
        metadata:
          name: {name}
          namespace: {ns}
        spec:
          default:
            predictor:
              sklearn:
                storageUri: {uri}
        """)


def policy_doc(name: str, ns: str, spec: dict[str, Any]) -> str:
    """A RolloutPolicy document with `spec` as given."""
    doc = {"apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False)
