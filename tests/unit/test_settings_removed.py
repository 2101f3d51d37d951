"""Settings that went away are refused with a message that says so (issue 15: `kubernetes.stateNamespace`
was accepted and never used: a setting that does nothing misleads the admin who set it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from canaryd.config import load_settings


def test_state_namespace_is_refused_with_why(tmp_path: Path) -> None:
    path = tmp_path / "canaryd.yaml"
    path.write_text("repo:\n  url: https://git.example.com/cfg.git\nkubernetes:\n  stateNamespace: canaryd\n")
    with pytest.raises(ValidationError) as err:
        load_settings(path)
    text = str(err.value)
    assert "kubernetes" in text and "stateNamespace was removed" in text and "ModelRollout" in text
    path.write_text("repo:\n  url: https://git.example.com/cfg.git\nkubernetes:\n  defaultNamespace: models\n")
    assert load_settings(path).kubernetes.default_namespace == "models"
