"""Human-readable rendering of rollout states, shared by `canaryd status` and the demo's live table."""

from __future__ import annotations

from typing import Any

from canaryd.rollout.state import RolloutState, step_label, steps_of

COLUMNS = ("SERVICE", "PHASE", "COMPONENT", "STEP", "WEIGHT", "STABLE", "CANARY", "COMMIT", "ERR-RATE", "P99(ms)",
           "LAST VERDICT")


def last_numbers(state: RolloutState) -> tuple[str, str]:
    """Canary error rate and latency of the newest analysis, as display strings ('-' when unknown)."""
    if not state.status.analyses:
        return "-", "-"
    verdict = state.status.analyses[-1].verdict
    err = lat = "-"
    for m in verdict.metrics:
        if m.name == "error-rate" and m.value is not None:
            err = f"{m.value:.4f}"
        elif m.name == "latency" and m.value is not None:
            lat = f"{m.value:.0f}"
    return err, lat


def component(state: RolloutState) -> str:
    """The component in flight (weight and revisions are its own), and the ones still to come."""
    pending = state.spec.pending_components
    return state.spec.component + (f" (then {', '.join(pending)})" if pending else "")


def row(state: RolloutState) -> tuple[str, ...]:
    st = state.status
    err, lat = last_numbers(state)
    verdict = st.analyses[-1].verdict.outcome if st.analyses else "-"
    return (
        state.spec.target.key, str(st.phase), component(state), step_label(st.step, steps_of(state)),
        f"{st.weight}%", st.stable_revision or "-",
        st.canary_revision or "-", (state.spec.commit or "-")[:8], err, lat, verdict,
    )


def render_table(states: list[RolloutState]) -> str:
    rows = [COLUMNS, *[row(s) for s in sorted(states, key=lambda s: s.spec.target.key)]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if len(rows) == 1:
        lines.append("(no ModelRollouts: canaryd has not rolled anything out yet)")
    else:
        for s in sorted(states, key=lambda s: s.spec.target.key):
            if s.status.last_verdict:
                lines.append(f"{s.spec.target.key}: {s.status.message}")
                lines.append(f"  last analysis: {s.status.last_verdict}")
            elif s.status.message:
                lines.append(f"{s.spec.target.key}: {s.status.message}")
    return "\n".join(lines)


def render_history(state: RolloutState) -> str:
    """Transitions (oldest first) and the kept analyses of one service, for `canaryd history`. Steps are a
    person's numbers (1/5 for the first of five; - before the first step)."""
    steps = steps_of(state)
    out = [f"{state.spec.target.key}: {state.status.phase} (commit {(state.spec.commit or '-')[:8]},"
           f" spec {state.spec.spec_hash or '-'})", "", "TIME                      COMMIT    COMPONENT    STEP   WEIGHT"
           "  PHASE             REASON"]
    for h in state.status.history:
        out.append(f"{h.at.isoformat(timespec='seconds'):<25} {(h.commit or '-')[:8]:<9} {h.component or '-':<12}"
                   f" {step_label(h.step, steps):>5}  {h.weight:>5}%  {h.phase!s:<17} {h.reason}: {h.message}")
    if state.status.analyses:
        out += ["", "last analyses:"]
        for a in state.status.analyses:
            out.append(f"{a.at.isoformat(timespec='seconds')} step {step_label(a.step, steps)} at {a.weight}%: "
                       f"{a.verdict.summary}")
    return "\n".join(out)


def history_json(state: RolloutState) -> dict[str, Any]:
    """`canaryd history -o json`: the same as the table, with steps counted from 1 (null before the first)."""
    steps = steps_of(state)

    def step(index: int) -> int | None:
        return index + 1 if index >= 0 else None

    return {
        "service": state.spec.target.key, "phase": str(state.status.phase), "commit": state.spec.commit,
        "specHash": state.spec.spec_hash, "steps": steps,
        "history": [{"at": h.at.isoformat(), "phase": str(h.phase), "reason": h.reason, "message": h.message,
                     "step": step(h.step), "weight": h.weight, "commit": h.commit, "component": h.component}
                    for h in state.status.history],
        "analyses": [{"at": a.at.isoformat(), "step": step(a.step), "weight": a.weight,
                      "canaryRevision": a.canary_revision, "verdict": a.verdict.model_dump(mode="json")}
                     for a in state.status.analyses],
    }
