"""The demo's live table."""

from __future__ import annotations


def test_demo_table_has_a_width_for_every_status_column() -> None:
    """Regression: the COMPONENT column was added to `canaryd status` but not to the demo's widths, and
    `canaryd demo` crashed on its first table line."""
    from canaryd.sandbox.demo import WIDTHS, format_row
    from canaryd.status import COLUMNS

    assert len(WIDTHS) == len(COLUMNS)
    assert format_row(COLUMNS).split() == [w for c in COLUMNS for w in c.split()]
