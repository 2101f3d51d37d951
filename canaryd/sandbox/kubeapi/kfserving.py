"""KFServing 0.4's validating admission webhook for `serving.kubeflow.org/v1alpha2` InferenceServices.

The v0.4.1 CRD types `canaryTrafficPercent` as a bare integer; the bounds were the webhook's job
(`pkg/apis/serving/v1alpha2/inferenceservice_validation.go`): a percent outside 0..100, or a non-zero
percent without `spec.canary`, is denied with KFServing's own messages. The emulator answers such a write
with 422 Invalid, like any other rejected object, and stores nothing.

A `RequestHook` sees a request before its body is read and before a patch is applied, but a webhook judges
the object as it would be stored; so this installs itself as the resource type's per-kind validator, the
seam the API emulator calls with exactly that object on every create and update. Only the InferenceService
itself is judged: like the real webhook (registered for `inferenceservices`, not `inferenceservices/status`),
a write that leaves the spec as it was is let through.
"""

from __future__ import annotations

from typing import Any

from canaryd.sandbox.kubeapi.emulator import KubeApiEmulator
from canaryd.sandbox.kubeapi.errors import INVALID, FieldError

GROUP, VERSION, PLURAL = "serving.kubeflow.org", "v1alpha2", "inferenceservices"
PERCENT_PATH = "spec.canaryTrafficPercent"

# KFServing v0.4 `inferenceservice_validation.go`, verbatim.
TRAFFIC_BOUNDS_EXCEEDED = "TrafficPercent must be between [0, 100]."
TRAFFIC_WITHOUT_CANARY = "Canary must be specified when CanaryTrafficPercent > 0."


def validate_v1alpha2(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    """KFServing's `validateCanaryTrafficPercent` on the object about to be stored."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []  # the CRD schema reports a missing or mistyped spec
    if old is not None and spec == old.get("spec"):
        return []  # a status or metadata write: the webhook does not see it, or sees nothing new
    percent = spec.get("canaryTrafficPercent", 0)
    if not isinstance(percent, int) or isinstance(percent, bool):
        return []  # mistyped: the CRD schema's error
    if spec.get("canary") is None and percent != 0:
        return [FieldError(INVALID, PERCENT_PATH, percent, TRAFFIC_WITHOUT_CANARY)]
    if not 0 <= percent <= 100:
        return [FieldError(INVALID, PERCENT_PATH, percent, TRAFFIC_BOUNDS_EXCEEDED)]
    return []


def install_kfserving_webhook(api: KubeApiEmulator) -> bool:
    """Judge every v1alpha2 InferenceService write as KFServing's webhook would; False if the emulator does
    not serve that API (no KFServing CRD loaded). Call it after the CRD is loaded: a CRD loaded again
    later comes back without it."""
    rt = api.registry.get(GROUP, VERSION, PLURAL)
    if rt is None:
        return False
    rt.validator = validate_v1alpha2
    return True
