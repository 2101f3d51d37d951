"""`prometheus.maxSampleAge` (issue 14 item 1): a bad value is a config error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from canaryd.config import load_settings


def settings(tmp_path: Path, prometheus: str) -> Path:
    path = tmp_path / "canaryd.yaml"
    path.write_text(f"repo:\n  url: https://git.example.com/cfg.git\nprometheus:\n{prometheus}")
    return path


def test_max_sample_age_defaults_to_three_scrape_intervals(tmp_path: Path) -> None:
    assert load_settings(settings(tmp_path, "  scrapeInterval: 15s\n")).prometheus.max_sample_age_s == 45
    got = load_settings(settings(tmp_path, "  scrapeInterval: 15s\n  maxSampleAge: 1m\n"))
    assert got.prometheus.max_sample_age_s == 60


@pytest.mark.parametrize("value,words", [
    ("5s", "maxSampleAge (5s) must be at least scrapeInterval (15s)"),
    ("0s", "must be a positive duration"),
    ("soon", "invalid duration 'soon'"),
])
def test_a_bad_max_sample_age_is_refused_with_its_key(tmp_path: Path, value: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_settings(settings(tmp_path, f"  scrapeInterval: 15s\n  maxSampleAge: {value}\n"))
    assert words in str(err.value) and "maxSampleAge" in str(err.value)
