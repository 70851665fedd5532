"""One desired model fetched from the broker into a store: its manifest's retained topic, then
one retained topic per chunk not yet on disk, each chunk checked as it arrives.

A restart resumes with the missing chunks only, and a chunk with a wrong hash is discarded and
fetched again (``chunk_retries`` times). The last chunk stays in memory, and the model is
assembled from it with the others from disk.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Protocol

from edge_agent.models.store import ModelStore
from shared.codec import ChunkError
from shared.manifest import Manifest
from shared.messages import ModelRef
from shared.topics import Topics

__all__ = ["ChunkOutcome", "DownloadFailed", "ModelDownload", "Subscriber"]

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...
    def unsubscribe(self, topic_filter: str) -> None: ...


class DownloadFailed(Exception):
    """A chunk still wrong after ``chunk_retries`` fetches: the download cannot finish."""


class ChunkOutcome(enum.Enum):
    IGNORED = "ignored"  # not a chunk this download waits for
    REFUSED = "refused"  # wrong: discarded and fetched again
    ACCEPTED = "accepted"
    COMPLETE = "complete"  # the last one missing: the model can be staged


class ModelDownload:
    """The download of ``ref`` into ``store`` (the model store, or its switch area for another
    variant of the running version). It lasts as long as the update does: the updater loads
    the model from :meth:`assemble`, shadows it, and promotes it from ``store``."""

    def __init__(self, ref: ModelRef, *, store: ModelStore, topics: Topics, link: Subscriber,
                 chunk_retries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ref = ref
        self.store = store
        self._topics = topics
        self._link = link
        self._chunk_retries = chunk_retries
        self._clock = clock
        self.manifest: Manifest | None = None
        # The manifest accepted from the network in this process (signature checked then):
        # assembling it checks the bytes against it instead of reading both back from disk.
        self._checked: Manifest | None = None
        # The download's last chunk, checked, kept in memory only: staged at once, it need not
        # be written, read back and deleted. The others are on disk (a restart resumes).
        self._received: dict[int, bytes] = {}
        self._missing: set[int] = set()
        self._attempts: dict[int, int] = {}
        self._subscribed: set[str] = set()
        self._started = 0.0

    def saved_manifest(self) -> Manifest | None:
        """The manifest of ``ref`` already on disk, if it will do; another variant's files are
        deleted (unless it is the current model) so that this one is fetched anew."""
        ref = self.ref
        saved = self.store.saved_manifest(ref.name, ref.version)
        if saved is not None and ref.variant not in (None, saved.quantization.value):
            if self.store.discard(ref.name, ref.version):
                log.info("dropping the stored %s variant of %s v%d for variant %s",
                         saved.quantization.value, ref.name, ref.version, ref.variant)
            saved = None
        if saved is not None and saved.release >= self.store.releases.get(ref.name):
            # (an older release of it on disk is not enough: going back needs the hub's
            # new release of this version, which is on the broker)
            return saved
        return None

    def ask_manifest(self) -> None:
        self._sub(self._manifest_topic())

    def manifest_arrived(self) -> None:
        """Its retained manifest came (or was cleared): that topic has nothing more to say."""
        self._unsub(self._manifest_topic())

    def accept_manifest(self, payload: bytes) -> Manifest:
        """The manifest from the network with its signature (and release, names) checked, kept
        on disk; raises :class:`StoreError` with the reason it was refused."""
        ref = self.ref
        manifest = self.store.accept_manifest(payload, name=ref.name, version=ref.version,
                                              variant=ref.variant)
        self._checked = manifest
        return manifest

    def fetch_chunks(self) -> bool:
        """Subscribe to each chunk of ``manifest`` not on disk yet; False if none is missing."""
        manifest = self.manifest
        assert manifest is not None
        missing = self.store.missing_chunks(manifest)
        if not missing:
            return False
        self._missing = set(missing)
        self._started = self._clock()
        log.info("model %s v%d: downloading %d of %d chunk(s), %d bytes", manifest.name,
                 manifest.version, len(missing), manifest.chunks.count, manifest.size)
        for index in missing:
            self._sub(self._chunk_topic(manifest, index))
        return True

    def on_chunk(self, index: int, payload: bytes) -> ChunkOutcome:
        """Chunk ``index`` arrived; raises :class:`DownloadFailed` once it was wrong too often."""
        manifest = self.manifest
        assert manifest is not None
        topic = self._chunk_topic(manifest, index)
        if topic not in self._subscribed:
            return ChunkOutcome.IGNORED
        last = self._missing == {index}
        try:
            if last:  # staged from memory at once: no file to write, read back and delete
                self.store.check_chunk(manifest, index, payload)
            else:  # kept on disk too, so that a restart resumes with the missing ones only
                self.store.put_chunk(manifest, index, payload)
        except ChunkError as exc:
            tries = self._attempts.get(index, 0) + 1
            self._attempts[index] = tries
            if tries > self._chunk_retries:
                raise DownloadFailed(f"{exc}; still wrong after {tries} fetches") from None
            log.warning("discarding bad chunk (%s); fetching it again (%d/%d)", exc, tries,
                        self._chunk_retries)
            self._unsub(topic)
            self._sub(topic)  # re-subscribing makes the broker send the retained chunk again
            return ChunkOutcome.REFUSED
        self._unsub(topic)
        if last:
            self._received[index] = payload
        self._missing.discard(index)
        if self._missing:
            return ChunkOutcome.ACCEPTED
        log.info("model %s v%d: download complete in %.1fs", manifest.name,
                 manifest.version, self._clock() - self._started)
        return ChunkOutcome.COMPLETE

    def assemble(self, manifest: Manifest) -> tuple[Manifest, bytes]:
        """The model's bytes joined and checked, with the manifest they were checked against;
        raises with the reason they were refused."""
        store = self.store
        if store.has_model(manifest):  # checked again
            return store.read_verified(manifest.name, manifest.version)
        if self._checked is manifest:
            # its signature was checked as it arrived, in this process; its bytes are checked
            # against it now (size, sha256): nothing to read back from disk
            return manifest, store.install(manifest, self._received)
        # a manifest saved by an earlier run: its signature is checked on reading
        store.install(manifest, self._received)
        return store.read_verified(manifest.name, manifest.version)

    def close(self) -> None:
        """Unsubscribe from what is still subscribed and let go of the chunk kept in memory."""
        self._received = {}
        for topic in list(self._subscribed):
            self._unsub(topic)

    def _manifest_topic(self) -> str:
        return self._topics.manifest(self.ref.name, self.ref.version, self.ref.variant)

    def _chunk_topic(self, manifest: Manifest, index: int) -> str:
        # a variant asked for by name comes from its own topics, the published one from the
        # version's (whatever its quantization)
        return self._topics.chunk(manifest.name, manifest.version, index, self.ref.variant)

    def _sub(self, topic: str) -> None:
        self._subscribed.add(topic)
        self._link.subscribe(topic, 1)

    def _unsub(self, topic: str) -> None:
        if topic in self._subscribed:
            self._subscribed.discard(topic)
            self._link.unsubscribe(topic)
