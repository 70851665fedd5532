"""What the ingest bench runs on its private broker: the ``cloud-hub serve`` processes under
test, the flood's devices in their registry and the publishers' identities on the broker."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine
from sqlmodel import Session

from shared.topics import DeviceTopic, TopicAccess
from simulator.bench_database import Database
from simulator.broker import Broker
from simulator.hub_process import HubProcess
from simulator.ingest_bench.machine import (
    affinity,
    database_backends_cpu_s,
    process_cpu_s,
    process_rss,
    process_sched_s,
)

__all__ = ["Hubs", "database_url", "enroll", "publisher_connections", "stored_count"]


def stored_count(counted: dict[str, int]) -> int:
    """Messages the hubs took off the broker for good: stored, or found stored already."""
    return counted["telemetry_batches"] + counted["duplicates"]


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")  # a record's first line


class Hubs:
    """One or more ``cloud-hub serve`` processes on one broker and one database."""

    def __init__(self, broker: Broker, db: Database, work: Path, count: int = 1,
                 cpus: set[int] | None = None) -> None:
        self.procs: list[HubProcess] = []
        self.db = db
        self.cpus = cpus  # the hubs' CPUs (--pin-hub); None: any
        self.admin_key = "el_" + secrets.token_urlsafe(24)  # never "-..." (an option)
        for i in range(count):
            env = {"EDGELOOP_MQTT_CLIENT_ID": f"bench-hub-{i}"}
            env.update(broker.hub_env(f"bench-hub-{i}"))  # its credential and TLS
            if count > 1:  # set up as docs/scaling.md says: one share group, one signing key
                env["EDGELOOP_MQTT_SHARE_GROUP"] = "bench"
                env["EDGELOOP_SIGNING_KEY_PATH"] = str(work / "keys" / "signing-key.pem")
                env["EDGELOOP_SIGNING_KEYS_DIR"] = str(work / "keys" / "rotated")
            if db.url:
                env["EDGELOOP_DATABASE_URL"] = db.url
            self.procs.append(HubProcess(work / f"hub-{i}", mqtt_port=broker.port,
                                         admin_api_key=self.admin_key, extra_env=env))

    def start(self) -> Hubs:
        for p in self.procs:  # one at a time: the first creates the schema
            with affinity(self.cpus):  # inherited by the process and all its threads
                p.launch()
            p.wait_healthy(180)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def log_warnings(self, keep: int = 20) -> dict[str, Any]:
        """The hubs' WARNING and ERROR log lines (a reconnect, a retried commit): how many, and
        the last ``keep``, each with the traceback that followed it, if any. Read before the
        bench's directory, and the logs in it, are gone."""
        lines: list[str] = []
        for p in self.procs:
            try:
                text_ = p.log_path.read_text(errors="replace")
            except OSError:
                continue
            inside = False  # in a WARNING or ERROR record: its traceback lines go with it
            for line in text_.splitlines():
                if _LOG_RECORD.match(line):
                    inside = " WARNING " in line or " ERROR " in line
                    if inside:
                        lines.append(f"{p.data_dir.name}: {line}")
                elif inside and lines:
                    lines[-1] += "\n" + line
        return {"count": len(lines), "last": lines[-keep:]}

    def metrics(self) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            r = httpx.get(f"{p.url}/api/v1/metrics", headers={"X-API-Key": self.admin_key},
                          timeout=30)
            r.raise_for_status()
            out.append(r.json())
        return out

    def stored(self) -> int:
        return stored_count(self.counters())

    def counters(self) -> dict[str, int]:
        """What the hubs counted, summed: ``telemetry_batches`` (each stored once),
        ``duplicates`` (messages found stored already: in the bench, whose publishers never
        resend, the broker's redeliveries after a hub reconnected) and ``commit_errors``."""
        got = self.metrics()
        return {k: sum(int(m[k]) for m in got)
                for k in ("telemetry_batches", "duplicates", "commit_errors")}

    def database_cpu_s(self) -> float:
        return database_backends_cpu_s(self.db.url)

    def missing_batches(self) -> int:
        """What the hub itself shows missing: seqs below a stream's highest stored one that
        never arrived (``missing_batches`` in ``GET /api/v1/telemetry/summary``). Messages the
        broker dropped show up here, except those after a stream's last stored one."""
        r = httpx.get(f"{self.procs[0].url}/api/v1/telemetry/summary",
                      params={"limit": 1000}, headers={"X-API-Key": self.admin_key},
                      timeout=120)
        r.raise_for_status()
        return sum(int(row["missing_batches"]) for row in r.json())

    def cpu_s(self) -> float:
        return sum(process_cpu_s(p.pid) for p in self.procs)

    def waited_s(self) -> float:
        return sum(process_sched_s(p.pid)[1] for p in self.procs)

    def rss(self) -> int:
        return max(process_rss(p.pid) for p in self.procs)


def database_url(hubs: Hubs, db: Database) -> str:
    return db.url or f"sqlite:///{hubs.procs[0].data_dir / 'hub.db'}"


def publisher_connections(broker: Broker, processes: int) -> list[dict[str, Any]]:
    """How each publisher process connects: on the secure harness (TLS, a password per
    identity) with its own identity that may publish every device's telemetry, standing in
    for the devices (one connection per device would measure the publishers, not the hub)."""
    access = TopicAccess(publish=(broker.topics.all_devices(DeviceTopic.TELEMETRY),),
                         subscribe=())
    out = []
    for i in range(processes):
        c: dict[str, Any] = {"host": broker.host, "port": broker.port,
                             "client_id": f"bench-flood-{i}"}
        if broker.secure:
            cred = broker.add_client(f"bench-flood-{i}", access)
            c.update(client_id=cred.client_id, username=cred.username, password=cred.password,
                     ca_file=str(broker.ca_file))
        out.append(c)
    return out


def enroll(database_url: str, device_ids: list[str]) -> None:
    """The hub stores only enrolled devices' messages: record the flood's devices in its
    registry, without broker credentials. Bench-only: the flood is published by the
    ``bench-flood-*`` identities (:func:`publisher_connections`), never with a device's
    credential, so the 1,000 per-device dynsec clients and roles that
    ``POST /api/v1/enrollments`` creates (about a minute of setup per PostgreSQL case) would
    never be used. The product still gives every device its own credential; the hub checks the
    registry per batch, as for any device."""
    from cloud_hub.db.enrollments import record_enrollment

    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            record_enrollment(session, device_ids, broker_credential=False)
    finally:
        engine.dispose()
