"""Which identities exist on the broker, and what each may do.

- a device: username and client id are its device id; it writes only its own streams and reads
  only its own ``desired``/``ack``, the models, the trust lists and the hubs' status;
- a hub: one identity per connection, all with the hub's password: ``<hub id>`` (ingest,
  presence, acknowledgements, desired state and models), ``<hub id>-admin`` (device
  credentials, through the dynamic-security plugin, and nothing else) and ``<hub id>-check``
  (a starting hub reads its own status record, to find another hub with its client id);
- the broker admin that ``cloud-hub broker init`` and the test harness use to set up the rest.

Every identity's client id is bound to it, so nobody can take over another's session.
"""

from __future__ import annotations

from cloud_hub.identity.dynsec import Credential, Identity, new_password
from shared.topics import TopicAccess, Topics, broker_admin_access, validate_device_id

__all__ = [
    "BROKER_ADMIN",
    "HUB_ADMIN_SUFFIX",
    "HUB_CHECK_SUFFIX",
    "device_identity",
    "device_rolename",
    "hub_identities",
    "hub_credential",
    "broker_admin_identity",
]

BROKER_ADMIN = "edgeloop-broker-admin"
HUB_ADMIN_SUFFIX = "-admin"
HUB_CHECK_SUFFIX = "-check"  # a starting hub looks for another one with its client id


def device_rolename(device_id: str) -> str:
    return f"device:{device_id}"


def device_identity(topics: Topics, device_id: str, password: str | None = None) -> Identity:
    validate_device_id(device_id)
    credential = Credential(device_id, password or new_password(), device_id)
    return Identity(credential, device_rolename(device_id), topics.device_access(device_id))


def hub_credential(hub_id: str, password: str, suffix: str = "") -> Credential:
    """The credential of one of the hub's connections (username = client id)."""
    return Credential(hub_id + suffix, password, hub_id + suffix)


def hub_identities(topics: Topics, hub_id: str, password: str) -> list[Identity]:
    validate_device_id(hub_id)
    data = topics.hub_access(hub_id)
    return [
        Identity(hub_credential(hub_id, password), f"hub:{hub_id}", data),
        Identity(hub_credential(hub_id, password, HUB_ADMIN_SUFFIX), "broker-admin",
                 broker_admin_access()),
        Identity(hub_credential(hub_id, password, HUB_CHECK_SUFFIX), f"hub-check:{hub_id}",
                 TopicAccess(publish=(), subscribe=(topics.hub_status(hub_id),))),
    ]


def broker_admin_identity(password: str | None = None) -> Identity:
    credential = Credential(BROKER_ADMIN, password or new_password(), BROKER_ADMIN)
    return Identity(credential, "broker-admin", broker_admin_access())
