"""Serving the API in a thread of a process that has its own logging (the tests, the console
bench) leaves that logging alone."""

from __future__ import annotations

import io
import logging

import pytest

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.service import Hub

pytestmark = [pytest.mark.integration, pytest.mark.hub]


class _ClosingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Closes its stream when closed, as absl's handler (TensorFlow's) does with any stream
    that is not the current sys.stderr: under pytest, the capture's."""

    def close(self) -> None:
        self.stream.close()
        super().close()


def test_serving_in_a_thread_closes_no_handler_of_the_process(hub: Hub) -> None:
    stream = io.StringIO()
    handler = _ClosingHandler(stream)
    logger = logging.getLogger("an-embedding-application")
    logger.addHandler(handler)
    try:
        server = serve_in_thread(hub)
        server.stop()
        # uvicorn's own logging set-up shut down every handler of the process (it closed
        # pytest's captured stderr through absl's, and the run crashed).
        assert not stream.closed
        logger.warning("still logging")
        assert "still logging" in stream.getvalue()
    finally:
        logger.removeHandler(handler)
        handler.close()
