"""The broker side of device identity: the hub's small CA, mosquitto's dynamic-security plugin
(per-identity passwords, roles and client-id bindings, changed at run time), and the files an
operator needs to run a secure broker.

Standard library, ``cryptography`` and paho only: the broker harness (``simulator.broker``)
imports this in the minimal edge venv, which has none of the hub's heavy dependencies.
"""
