"""The hub's signing keys and the signed trust lists that rotate them on the devices."""
