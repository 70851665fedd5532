"""The hub's metrics in the Prometheus text format (version 0.0.4), for one scrape per process.

Every hub process keeps its own counters, so with several hubs behind a load balancer each is
scraped at its own address (docs/scaling.md, "Watching the hubs"); ``edgeloop_hub_info`` names
the process (its MQTT client id and its lease holder id) and the job leases it holds come as
``edgeloop_hub_lease_held{lease=...}``. :data:`METRICS` lists every figure of
``GET /api/v1/metrics`` that is exported, with its type and meaning; the few left out are text
(:data:`NOT_EXPORTED`), and a test checks that every figure is one or the other. The broker's
own figures, which the hub relays (:mod:`cloud_hub.metrics.broker`), come as
``edgeloop_broker_*``, and what the process uses of its machine
(:mod:`cloud_hub.metrics.resources`) as Prometheus' standard ``process_*``. The fleet as the
database knows it (:mod:`cloud_hub.metrics.fleet`) comes as ``edgeloop_fleet_*``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cloud_hub.metrics.broker import FIGURES as BROKER_FIGURES
from cloud_hub.metrics.histogram import HistogramSnapshot

__all__ = ["BROKER_PREFIX", "CONTENT_TYPE", "FLEET_PREFIX", "METRICS", "NOT_EXPORTED", "PREFIX",
           "PROCESS_METRICS", "Metric", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edgeloop_hub_"
BROKER_PREFIX = "edgeloop_broker_"
FLEET_PREFIX = "edgeloop_fleet_"


@dataclass(frozen=True)
class Metric:
    key: str  # the figure's name in GET /api/v1/metrics
    name: str  # its Prometheus name after PREFIX (a counter's ends in _total)
    kind: Literal["counter", "gauge"]
    help: str


def _c(key: str, name: str, help_: str) -> Metric:
    return Metric(key, name, "counter", help_)


def _g(key: str, name: str, help_: str) -> Metric:
    return Metric(key, name, "gauge", help_)


METRICS: tuple[Metric, ...] = (
    # ingest: what this process committed
    _c("messages_received", "messages_committed_total",
       "MQTT messages ingest handled in committed transactions (stored, seen again, or "
       "dead-lettered)"),
    _c("telemetry_batches", "telemetry_batches_stored_total", "telemetry batches stored"),
    _c("telemetry_readings", "telemetry_readings_stored_total", "telemetry readings stored"),
    _c("duplicates", "duplicates_total",
       "messages found already stored (sent again) and not stored twice"),
    _c("anomalies", "anomalies_stored_total", "anomaly events stored"),
    _c("drift_summaries", "drift_summaries_stored_total", "drift summaries stored"),
    _c("dead_letters", "dead_letters_total",
       "messages refused and kept as dead letters (GET /api/v1/dead-letters)"),
    _c("unenrolled_refused", "unenrolled_refused_total",
       "messages of devices that are not enrolled, refused"),
    _c("retained_cleared", "retained_cleared_total",
       "retained messages on device topics that the hub cleared"),
    _c("commits", "ingest_commits_total", "ingest transactions committed"),
    _c("commit_errors", "ingest_commit_errors_total",
       "ingest transactions that failed (retried, or split to find a refused row)"),
    _c("device_conflicts", "device_conflicts_total",
       "batches that showed one device id used by two sources"),
    _g("last_commit_at", "last_commit_timestamp_seconds",
       "when ingest last committed (Unix time)"),
    _g("ingest_behind", "ingest_behind",
       "1 while ingest has a backlog (it takes full batches); background jobs wait meanwhile"),
    # the inbox between the MQTT connection and ingest
    _g("queue_depth", "inbox_messages", "messages received and not stored yet"),
    _g("queue_bytes", "inbox_bytes", "payload bytes received and not stored yet"),
    _g("queue_high_water", "inbox_high_water_messages",
       "most messages held at once since the start"),
    _c("queue_waits", "inbox_waits_total",
       "times the network thread waited for room in the inbox"),
    _c("dropped_qos0", "qos0_dropped_total",
       "QoS 0 messages (heartbeats) dropped for want of room in the inbox"),
    # the MQTT connection
    _g("mqtt_connected", "mqtt_connected", "1 while ingest's MQTT connection is up"),
    _c("births", "mqtt_sessions_started_total",
       "times the subscriptions were granted and the hub announced itself online"),
    _c("subscribe_refusals", "mqtt_subscribe_refusals_total",
       "times the broker refused the hub's subscriptions"),
    _c("takeovers", "mqtt_takeovers_total",
       "times another client took this hub's client id (two hubs sharing one)"),
    _c("late_pingresps", "mqtt_late_pingresps_total",
       "PINGRESPs a keep-alive late while the broker was sending (the connection was kept; "
       "the broker is lagging)"),
    _g("publisher_connected", "publisher_connected",
       "1 while the connection that publishes releases and desired states is up"),
    # acknowledgements to devices
    _c("acks_published", "acks_published_total", "delivery acknowledgements sent to devices"),
    _c("ack_bytes", "ack_bytes_total", "bytes of delivery acknowledgements sent"),
    _g("acks_pending", "acks_pending", "devices owed an acknowledgement"),
    _c("ack_errors", "ack_errors_total", "acknowledgement rounds that failed (retried)"),
    # retained records written again after each (re)connect
    _g("retained_asserted_at", "retained_asserted_timestamp_seconds",
       "when the retained records were last written again (Unix time)"),
    _g("retained_asserted_desired", "retained_asserted_desired",
       "desired-state records written at the last assertion"),
    _g("retained_asserted_models", "retained_asserted_models",
       "model records written at the last assertion"),
    _c("retained_assert_failures", "retained_assert_failures_total",
       "assertions of the retained records that failed (retried)"),
    # SQLite's checkpoints (0 on PostgreSQL)
    _c("wal_checkpoints", "sqlite_wal_checkpoints_total", "SQLite WAL checkpoints run"),
    _c("wal_frames_checkpointed", "sqlite_wal_frames_checkpointed_total",
       "SQLite WAL frames copied into the database file"),
    _c("wal_checkpoint_failures", "sqlite_wal_checkpoint_failures_total",
       "SQLite WAL checkpoints that failed"),
    _g("uptime_s", "uptime_seconds", "seconds since this process started serving"),
    # the broker's device credentials against the registry (in the process holding the lease)
    _c("credential_audits", "broker_credential_audits_total",
       "audits of the broker's device credentials against the registry run by this process"),
    _c("credentials_deleted", "broker_credentials_deleted_total",
       "device credentials the audit deleted (revoked devices', failed enrollments')"),
    _g("devices_without_credential", "devices_without_broker_credential",
       "enrolled devices the broker has no credential for at the last audit (they cannot "
       "connect: revoke and enroll them again)"),
    _g("credential_audit_at", "broker_credential_audit_timestamp_seconds",
       "when this process last audited the broker's credentials (Unix time; 0: never)"),
    _g("revocations_unconfirmed", "revocations_unconfirmed",
       "revoked devices whose credential deletion the broker has not confirmed yet (this "
       "process retries it; they may still connect meanwhile)"),
    _c("revocations_confirmed_late", "revocations_confirmed_late_total",
       "revocations this process finished by retrying after the broker did not confirm them"),
)

# GET /api/v1/metrics' "process", under the names every Prometheus client library gives them
PROCESS_METRICS: tuple[Metric, ...] = (
    _c("cpu_seconds", "process_cpu_seconds_total",
       "user and system CPU time this process has used, in seconds"),
    _g("rss_bytes", "process_resident_memory_bytes", "resident memory of this process, in bytes"),
    _g("open_fds", "process_open_fds",
       "file descriptors this process has open (sockets, database files)"),
    _g("threads", "process_threads", "threads of this process"),
)

# Text, or exported another way: the identity in edgeloop_hub_info, the leases and the commit
# histogram as their own families, the broker's figures as edgeloop_broker_*, the process's
# as process_*.
NOT_EXPORTED = frozenset({"client_id", "lease_holder", "session", "mqtt_error", "leases",
                          "retained_desired_lease", "commit_seconds_sum", "broker", "process"})


def _value(v: float | int | bool) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _label(v: object) -> str:
    return str(v).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _family(lines: list[str], name: str, kind: str, help_: str, prefix: str = PREFIX) -> None:
    lines.append(f"# HELP {prefix}{name} {help_}")
    lines.append(f"# TYPE {prefix}{name} {kind}")


def render(metrics: Mapping[str, object], *, commit_seconds: HistogramSnapshot,
           fleet: Mapping[str, Any] | None = None) -> str:
    """The text exposition of ``metrics`` (as ``GET /api/v1/metrics`` gives them) and of
    ``fleet`` (:func:`cloud_hub.metrics.fleet.fleet_figures`). A figure that has no value yet
    (a time not reached) is left out, as Prometheus expects."""
    lines: list[str] = []
    _family(lines, "info", "gauge",
            "this hub process: its MQTT client id, lease holder id and MQTT session")
    identity = ",".join(f'{k}="{_label(metrics.get(k) or "")}"'
                        for k in ("client_id", "lease_holder", "session"))
    lines.append(f"{PREFIX}info{{{identity}}} 1")
    for m in METRICS:
        value = metrics.get(m.key)
        if not isinstance(value, int | float):  # bool is an int
            continue
        _family(lines, m.name, m.kind, m.help)
        lines.append(f"{PREFIX}{m.name} {_value(value)}")
    leases = metrics.get("leases")
    if isinstance(leases, Mapping) and leases:
        _family(lines, "lease_held", "gauge",
                "1 while this process holds the job lease (one holder per database)")
        for lease, held in sorted(leases.items()):
            lines.append(f'{PREFIX}lease_held{{lease="{_label(lease)}"}} {_value(bool(held))}')
    name = "ingest_commit_seconds"
    _family(lines, name, "histogram",
            "time to store one batch: its transaction, from the first statement to the commit")
    for bound, n in commit_seconds.cumulative():
        lines.append(f'{PREFIX}{name}_bucket{{le="{_value(bound)}"}} {n}')
    lines.append(f"{PREFIX}{name}_sum {_value(commit_seconds.total)}")
    lines.append(f"{PREFIX}{name}_count {commit_seconds.count}")
    own = metrics.get("process")
    if isinstance(own, Mapping):
        for m in PROCESS_METRICS:
            value = own.get(m.key)
            if isinstance(value, int | float):
                _family(lines, m.name, m.kind, m.help, prefix="")
                lines.append(f"{m.name} {_value(value)}")
    broker = metrics.get("broker")
    if isinstance(broker, Mapping):
        _broker(lines, broker)
    if fleet is not None:
        _fleet(lines, fleet)
    return "\n".join(lines) + "\n"


def _fleet(lines: list[str], fleet: Mapping[str, Any]) -> None:
    _family(lines, "devices", "gauge",
            "enrolled devices by presence: online, silent (online by its status record, "
            "nothing sent for a while) or offline", FLEET_PREFIX)
    for state, n in fleet["devices"].items():
        lines.append(f'{FLEET_PREFIX}devices{{state="{_label(state)}"}} {_value(n)}')
    for key, name, help_ in (
        ("out_of_sync", "devices_out_of_sync", "devices not running the model desired for them"),
        ("with_open_incidents", "devices_with_open_incidents",
         "devices with an incident not resolved"),
        ("outbox_messages", "outbox_messages",
         "messages the devices hold that the hub has not acknowledged, as each device's last "
         "heartbeat said"),
        ("oldest_unsent_s", "oldest_unsent_seconds",
         "age of the oldest message an online device holds unacknowledged, by the last "
         "heartbeats"),
    ):
        value = fleet.get(key)
        if isinstance(value, int | float):
            _family(lines, name, "gauge", help_, FLEET_PREFIX)
            lines.append(f"{FLEET_PREFIX}{name} {_value(value)}")


def _broker(lines: list[str], broker: Mapping[str, object]) -> None:
    """The broker's figures as this hub last heard them; nothing of a figure not heard yet."""
    subscribed = broker.get("subscribed")
    if isinstance(subscribed, bool):
        _family(lines, "stats_subscribed", "gauge",
                "1 when the broker granted this hub its figures ($SYS/broker/#), 0 when it "
                "refused them", BROKER_PREFIX)
        lines.append(f"{BROKER_PREFIX}stats_subscribed {_value(subscribed)}")
    age = broker.get("age_s")
    if isinstance(age, int | float):
        _family(lines, "stats_age_seconds", "gauge",
                "seconds since this hub last heard one of the broker's figures (it publishes "
                "them every sys_interval)", BROKER_PREFIX)
        lines.append(f"{BROKER_PREFIX}stats_age_seconds {_value(age)}")
    version = broker.get("version")
    if isinstance(version, str):
        _family(lines, "info", "gauge", "the broker's version, as it reports it",
                BROKER_PREFIX)
        lines.append(f'{BROKER_PREFIX}info{{version="{_label(version)}"}} 1')
    for f in BROKER_FIGURES:
        value = broker.get(f.key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            _family(lines, f.name, f.kind, f.help, BROKER_PREFIX)
            lines.append(f"{BROKER_PREFIX}{f.name} {_value(value)}")
