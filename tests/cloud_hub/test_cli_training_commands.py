"""``cloud-hub train`` and ``jobs`` against a running hub: a job started, listed, shown and
cancelled, and a bad CSV, spec, window, time or name refused on one line of stderr, no job
started and no traceback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.db.registry_tables import TrainingJob
from cloud_hub.service import Hub
from simulator.broker import Broker
from tests.cloud_hub.conftest import _ok, _refused, hub_settings, run_cli
from tests.cloud_hub.helpers import _row, enroll_devices, training_until_cancelled, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def test_jobs_list_show_and_cancel_a_running_job(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    started = threading.Event()
    hub = Hub(hub_settings(broker, tmp_path / "hub"),
              run_training=training_until_cancelled(started))
    enroll_devices(hub)
    server = serve_in_thread(hub)
    csv_file = tmp_path / "readings.csv"
    csv_file.write_text("a,b\n" + "".join(f"{i % 7},{i % 5}\n" for i in range(200)))
    try:
        job = json.loads(_ok(run_cli(server, capsys, "--json", "train", "slow-ae", "--csv",
                                     str(csv_file), "--window", "8", "--no-wait")))
        assert job["status"] in ("queued", "running")
        assert started.wait(20)
        wait_for(lambda: _row(hub, TrainingJob, job["id"]).status == "running", 20, "running")
        out = _ok(run_cli(server, capsys, "jobs"))
        assert "slow-ae" in out and "running" in out
        shown = json.loads(_ok(run_cli(server, capsys, "--json", "jobs", str(job["id"]))))
        assert shown["status"] == "running" and shown["request"]["spec"]["window"] == 8
        # one job in words, as in the list (it was the hub's progress object, printed raw)
        out = _ok(run_cli(server, capsys, "jobs", str(job["id"])))
        assert "slow-ae" in out and shown["progress"]["stage"] in out and "fraction" not in out

        _ok(run_cli(server, capsys, "jobs", "--cancel", str(job["id"])))
        wait_for(lambda: _row(hub, TrainingJob, job["id"]).status == "cancelled", 20,
                 "the job cancelled on the hub")
        _refused(run_cli(server, capsys, "jobs", "--cancel", str(job["id"])),
                 "HTTP 409", f"training job {job['id']} is cancelled")
        _refused(run_cli(server, capsys, "jobs", "99"), "HTTP 404", "training job 99")
        _refused(run_cli(server, capsys, "jobs", "--cancel", "99"), "HTTP 404")
        # Id 0 is no job: it used to list every job, or, with --cancel, list them and exit 0.
        _refused(run_cli(server, capsys, "jobs", "0"), "HTTP 422", "job_id")
        _refused(run_cli(server, capsys, "jobs", "--cancel", "0"), "HTTP 422", "job_id")

        # A missing CSV or a --spec that is not JSON used to end in a traceback.
        _refused(run_cli(server, capsys, "train", "x-ae", "--csv", str(tmp_path / "none.csv")),
                 "--csv", "none.csv")
        _refused(run_cli(server, capsys, "train", "x-ae", "--spec", "{window: 8}"),
                 "--spec", "not JSON")
        _refused(run_cli(server, capsys, "train", "x-ae", "--spec", '{"bogus": 1}'),
                 "HTTP 422", "spec.bogus")
        _refused(run_cli(server, capsys, "train", "x-ae", "--window", "eight"),
                 "--window", "invalid int value")
        _refused(run_cli(server, capsys, "train", "x-ae", "--since", "last tuesday"),
                 "'last tuesday' is not a time")
        _refused(run_cli(server, capsys, "train", "bad name"), "HTTP 422", "body.name")
        _refused(run_cli(server, capsys, "train"), "the following arguments are required")
        assert [j.id for j in _jobs(hub)] == [job["id"]], "no job started by a refusal"
    finally:
        server.stop()
        hub.stop()


def _jobs(hub: Hub) -> list[TrainingJob]:
    with Session(hub.engine) as session:
        return list(session.exec(select(TrainingJob)))
