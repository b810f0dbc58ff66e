"""The rollout flow: one check of a running staged rollout, on its own schedule (params
`rollout.cron`, hourly by default).

    read the rollout (rollouts/<channel>.json) -> every device's last status (field skill,
    failures) -> decide (advance | hold | abort | complete) -> carry it out in the registry
    (widen the signed rollout, or roll the channel back) -> the decision as an artifact, and the
    fleet report (HTML: field skill per release, drift over time, ring history) linked beside it

Each run ends in a state named for what it did: Advanced, Held, Aborted, RolledOut, or
NoRollout when none is running. The decision logic lives in skyedge.evaluation.rollout; this
module only orchestrates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.states import Completed, State

from skyedge.core.config import load_params
from skyedge.evaluation import fleet, rollout
from skyedge.release import registry
from skyedge.release.store import open_store

STATE_NAMES = {rollout.ADVANCE: "Advanced", rollout.HOLD: "Held", rollout.ABORT: "Aborted", rollout.COMPLETE: "RolledOut"}
NO_ROLLOUT = "NoRollout"


@task
def gather(store_url: str, endpoint_url: str | None, channel: str) -> dict:
    store = open_store(store_url, endpoint_url)
    return {"state": rollout.read_state(store, channel), "pointer": registry.read_channel(store, channel), "statuses": rollout.device_statuses(store)}


@task
def report_fleet(store_url: str, endpoint_url: str | None, channel: str, statuses: list[dict], now: datetime, out: Path, n_boot: int, seed: int) -> Path:
    """Record the fleet's snapshot (drift over time) and write the fleet report, locally and to the store."""
    store = open_store(store_url, endpoint_url)
    fleet.record_snapshot(store, fleet.snapshot(statuses, now))
    page = fleet.report_html(store, channel, n_boot, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    store.put_bytes("fleet/report.html", page.encode())
    return out


@task
def carry_out(store_url: str, endpoint_url: str | None, state: dict, decision: rollout.Decision, now: datetime, keys: str | None) -> dict:
    return rollout.apply(open_store(store_url, endpoint_url), state, decision, now, keys=registry.tuf_keys(keys))


@flow(name="skyedge-rollout", log_prints=True)
def rollout_check(
    workspace: str = ".",
    store: str | None = None,
    channel: str | None = None,
    keys: str | None = None,
    now: str | None = None,
    params_file: str = "params.yaml",
    endpoint_url: str | None = None,
) -> State:
    """Decide and carry out the next step of the channel's running rollout. `now` (ISO time) is
    for simulated fleets; scheduled runs use the clock. `params_file` is read relative to the
    workspace; `endpoint_url` overrides params.yaml's flow.endpoint_url (None there too:
    $AWS_ENDPOINT_URL, else AWS)."""
    root = Path(workspace).resolve()
    params = load_params(root / params_file)
    endpoint_url = endpoint_url or params.flow.endpoint_url
    store_url = store or params.flow.store
    if not store_url.startswith("s3://") and not Path(store_url).is_absolute():
        store_url = str(root / store_url)
    channel = channel or params.flow.channel
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    seen = gather(store_url, endpoint_url, channel)
    state = seen["state"]
    if state is None or state["state"] != rollout.RUNNING:
        message = f"no rollout running on {channel}" + (f" (the last one, of version {state['version']}, is {state['state']})" if state else "")
        print(message)
        return Completed(name=NO_ROLLOUT, message=message, data={"action": None})
    decision = rollout.decide(state, params.rollout, seen["pointer"], seen["statuses"], moment)
    updated = carry_out(store_url, endpoint_url, state, decision, moment, keys)
    report = rollout.describe(state, decision, markdown=True) + "\n\n### Ring history\n\n" + rollout.ring_history(updated, markdown=True)
    create_markdown_artifact(report, key="rollout-decision", description=f"Rollout of version {state['version']}: {decision.action}")
    page = report_fleet(store_url, endpoint_url, channel, seen["statuses"], moment, root / "reports" / "fleet-report.html", params.rollout.n_boot, params.rollout.seed)
    create_link_artifact(page.resolve().as_uri(), link_text="fleet report (HTML)", key="fleet-report", description="field skill per release, drift over time, ring history (also fleet/report.html in the store)")
    print(f"rollout of version {state['version']}: {decision.action}: {decision.reason}")
    return Completed(name=STATE_NAMES[decision.action], message=decision.reason, data={"action": decision.action, "state": updated})
