"""How each emulated model version behaves: readiness, error rate and latency.

One scenario file drives both the KServe controller emulator (when a revision becomes Ready, or never)
and the data plane (which answers each request with an error or not, and how slowly). Versions are keyed
by what a team changes in Git to ship a new version of a component: its `storageUri` (a model), or else
its first container's `image` (a transformer, a custom predictor).
Behaviour is seeded so that an end-to-end test sees the same error schedule on every run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


class LatencyModel(BaseModel):
    """Latency in milliseconds: `base` for most requests, `p99` for the slowest 1 % (a two-point tail)."""

    model_config = ConfigDict(extra="forbid")
    base: float = Field(default=20.0, ge=0)
    p99: float = Field(default=60.0, ge=0)
    jitter: float = Field(default=0.2, ge=0, le=1, description="relative spread around base")


class VersionBehaviour(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    error_rate: float = Field(default=0.0, ge=0, le=1, alias="errorRate")
    latency_ms: LatencyModel = Field(default_factory=LatencyModel, alias="latencyMs")
    ready_after_s: float = Field(default=1.0, ge=0, alias="readyAfterSeconds")
    never_ready: bool = Field(default=False, alias="neverReady")


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 1
    default: VersionBehaviour = Field(default_factory=VersionBehaviour)
    versions: dict[str, VersionBehaviour] = Field(default_factory=dict)

    def behaviour(self, storage_uri: str | None) -> VersionBehaviour:
        if storage_uri is not None and storage_uri in self.versions:
            return self.versions[storage_uri]
        return self.default

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        data: Any = yaml.safe_load(Path(path).read_text())
        return cls.model_validate(data or {})


def unit_draw(seed: int, key: str, n: int) -> float:
    """A deterministic uniform draw in [0, 1) for request `n` of `key`.

    Hash-based rather than a shared RNG, so the outcome of request n does not depend on how requests of
    other revisions interleave with it: the error schedule is the same on every run.
    """
    h = hashlib.blake2b(f"{seed}:{key}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def version_key_of(component_spec: dict[str, Any]) -> str | None:
    """The version of a v1beta1 component spec: its `storageUri` (new `model:` shape or the older framework
    keys), else the `image` of its first container."""
    model = component_spec.get("model")
    if isinstance(model, dict) and isinstance(model.get("storageUri"), str):
        return str(model["storageUri"])
    for value in component_spec.values():
        if isinstance(value, dict) and isinstance(value.get("storageUri"), str):
            return str(value["storageUri"])
    containers = component_spec.get("containers")
    if isinstance(containers, list) and containers and isinstance(containers[0], dict):
        image = containers[0].get("image")
        if isinstance(image, str):
            return image
    return None


#: The former name, from when only models had versions.
storage_uri_of = version_key_of
