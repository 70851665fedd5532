"""Signature checks for the agent, with the Ed25519 arithmetic in an isolated child process.

Everything that needs no cryptography library (pinned key id, signature encoding and length,
the canonical bytes) is checked in the agent; the curve checks run in a child started as
``python -I -c …``, which imports ``cryptography``, answers, and exits. A daemon that verifies a
model a few times a month should not keep OpenSSL's ~6 MB resident for it. One child checks a
whole batch of signatures (a manifest, a trust list, or the persisted trust chain at start-up)
in about 0.2 s; any failure to run it refuses what it was to check.

The child cannot be hijacked by modules in the agent's working or state directory: ``-I``
leaves the current directory and every ``PYTHON*`` variable out of its ``sys.path``, it runs in
a fixed directory, and it finds the agent's code only where the running agent's own code is.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.keys import SignatureError, SignedParts, signed_parts
from shared.manifest import Manifest

__all__ = ["verify_isolated", "verify_manifest_isolated"]

MAX_CHECKS = 256
# Where this agent's own packages are: the only place the child may import them from.
_CODE_ROOT = Path(__file__).resolve().parents[2]
_CHILD = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from edge_agent.models.verify import _child; sys.exit(_child())"
)


def verify_isolated(checks: Sequence[SignedParts], *, timeout: float = 60.0) -> list[bool]:
    """Run every Ed25519 check in one isolated child; True where the signature is good.

    Raises :class:`SignatureError` if the child could not run or answered nonsense."""
    if not checks:
        return []
    if len(checks) > MAX_CHECKS:
        raise SignatureError(f"{len(checks)} signatures to check, at most {MAX_CHECKS} at once")
    request = json.dumps({"checks": [
        {name: base64.b64encode(getattr(parts, name)).decode()
         for name in ("key", "signature", "message")}
        for parts in checks
    ]}).encode()
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, str(_CODE_ROOT)], input=request,
            capture_output=True, timeout=timeout, check=False, cwd=Path(_CODE_ROOT.anchor),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SignatureError(f"the signature check could not run: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SignatureError(
            f"the signature check failed to run (exit {done.returncode}): {tail[0][:300]}"
        )
    try:
        valid = json.loads(done.stdout)["valid"]
    except (ValueError, KeyError, TypeError):
        valid = None
    if not isinstance(valid, list) or len(valid) != len(checks) or not all(
        v is True or v is False for v in valid
    ):
        raise SignatureError(f"the signature check answered {done.stdout[:200]!r}")
    return valid


def verify_manifest_isolated(
    manifest: Manifest, pinned: Mapping[str, bytes], *, timeout: float = 60.0
) -> None:
    """Raise :class:`SignatureError` unless a pinned key with the manifest's key id signed it."""
    if not verify_isolated([signed_parts(manifest, pinned)], timeout=timeout)[0]:
        raise SignatureError(
            f"manifest {manifest.name} v{manifest.version}: signature does not verify "
            f"with key {manifest.key_id}"
        )


def _child() -> int:
    from shared.signing import verify_parts  # cryptography: in this child only

    request = json.loads(sys.stdin.buffer.read())
    valid = [
        verify_parts(SignedParts(*(base64.b64decode(c[k]) for k in ("key", "signature",
                                                                    "message"))))
        for c in request["checks"][:MAX_CHECKS]
    ]
    sys.stdout.write(json.dumps({"valid": valid}))
    return 0
