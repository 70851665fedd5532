"""Manifest signature checks for the agent, with the Ed25519 arithmetic in a child process.

Everything that needs no cryptography library (pinned key id, signature encoding and length,
the canonical bytes) is checked here; the curve check runs in ``python -m
edge_agent.models.verify``, which imports ``cryptography``, answers, and exits. A daemon that
verifies a model a few times a month should not keep OpenSSL's ~6 MB resident for it. A
verification costs about 0.2 s of start-up; any failure to run the child refuses the model.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Mapping

from shared.keys import SignatureError, SignedParts, signed_parts
from shared.manifest import Manifest

__all__ = ["verify_manifest_isolated"]

_GOOD, _BAD = 0, 3  # the child's exit codes; anything else means it could not check


def verify_manifest_isolated(
    manifest: Manifest, pinned: Mapping[str, bytes], *, timeout: float = 60.0
) -> None:
    """Raise :class:`SignatureError` unless a pinned key with the manifest's key id signed it."""
    parts = signed_parts(manifest, pinned)
    request = json.dumps({
        name: base64.b64encode(getattr(parts, name)).decode()
        for name in ("key", "signature", "message")
    }).encode()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent.models.verify"], input=request,
            capture_output=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SignatureError(f"the signature check could not run: {exc}") from None
    if done.returncode == _BAD:
        raise SignatureError(
            f"manifest {manifest.name} v{manifest.version}: signature does not verify "
            f"with key {manifest.key_id}"
        )
    if done.returncode != _GOOD:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SignatureError(
            f"the signature check failed to run (exit {done.returncode}): {tail[0][:300]}"
        )


def _child() -> int:
    from shared.signing import verify_parts  # cryptography: in this child only

    request = json.loads(sys.stdin.buffer.read())
    parts = SignedParts(*(base64.b64decode(request[k]) for k in ("key", "signature", "message")))
    return _GOOD if verify_parts(parts) else _BAD


if __name__ == "__main__":
    sys.exit(_child())
