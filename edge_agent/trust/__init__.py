"""The keys a device trusts to sign models: pinned root, signed trust lists, key rotation."""
