"""What a :class:`~edge_agent.core.DeviceCore` reports about its device: the
:class:`~edge_agent.ports.CoreStatus` behind ``DeviceCore.status()`` and the heartbeat
``DeviceCore.heartbeat()`` gives :meth:`~edge_agent.core.DeviceCore.tick` to publish."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.ports import CoreStatus
from edge_agent.telemetry.outbox import Stream
from shared.messages import Heartbeat

if TYPE_CHECKING:  # edge_agent.core imports this module
    from edge_agent.core import DeviceCore

__all__ = ["heartbeat_of", "status_of"]


def heartbeat_of(core: DeviceCore) -> Heartbeat:
    p50, p99 = core.detector.inference_us()
    return Heartbeat(
        device_id=core.device_id, at=core.clock.time(),
        uptime_s=core.clock.monotonic() - core.started_at, rss_bytes=core.rss(),
        inference_us_p50=p50, inference_us_p99=p99, outbox_depth=core.outbox.depth(),
        oldest_unsent_age_s=core.outbox.oldest_age(), drops=core.outbox.drops().messages,
        reconnects=max(0, core.connections - 1),
        bad_readings=core.bad_readings + core.source_bad_readings(),
        drift=core.drift.brief() if core.drift is not None else None,
    )


def status_of(core: DeviceCore) -> CoreStatus:
    active = core.detector.active
    drops = core.outbox.drops()
    p50, p99 = core.detector.inference_us()
    acked = core.window.acked
    updater = core.updater
    return CoreStatus(
        device_id=core.device_id,
        connected=core.connected,
        active_model=None if active is None else {
            "name": active.manifest.name, "version": active.manifest.version,
            "sha256": active.manifest.sha256,
            "variant": active.manifest.quantization.value,
        },
        model_state=updater.state.value if updater.state else None,
        threshold=None if active is None else active.threshold,
        runtime=None if active is None else getattr(active.runtime, "runtime", None),
        readings=core.readings,
        batches_sent=acked[Stream.TELEMETRY],
        readings_sent=core.window.acked_readings,
        anomalies_raised=core.anomalies_raised,
        anomalies_sent=acked[Stream.ANOMALIES],
        outbox_depth=core.outbox.depth(),
        outbox_bytes=core.outbox.pending_bytes(),
        oldest_unsent_age_s=core.outbox.oldest_age(),
        drops=drops.messages,
        dropped_readings=drops.telemetry_readings,
        dropped_anomalies=drops.anomalies,
        bad_readings=core.bad_readings + core.source_bad_readings(),
        bad_messages=core.bad_messages + updater.refused,
        outbox_refusals=core.outbox_refusals,
        outbox_delivered=core.outbox.delivered(),
        batches_stored=core.stored[Stream.TELEMETRY],
        readings_stored=core.stored_readings,
        anomalies_stored=core.stored[Stream.ANOMALIES],
        drift=core.drift.status() if core.drift is not None else None,
        drift_summaries_stored=core.stored[Stream.DRIFT],
        resent=core.outbox.resent,
        hub=core.hubs.status(),
        reconnects=max(0, core.connections - 1),
        inference_us_p50=p50,
        inference_us_p99=p99,
        uptime_s=core.clock.monotonic() - core.started_at,
        last_error=updater.last_error,
        last_error_at=updater.last_error_at,
        trust_version=core.trust.version,
        trusted_keys=sorted(core.trust.trusted()),
        trust_refused=core.trust.refused,
        acks_received=core.acks_received,
    )
