"""Whether the configured address may be served with the configured key.

Pensieve binds 127.0.0.1 by default, where only this machine's own users can reach it, and the
built-in key (`pensieve-local-key`) is printed in the README for convenience. Listening on any
other address hands the model, and the machine's compute, to the network: that is refused
unless the operator set a key of their own. The built-in key counts as no key, because everyone
knows it.
"""

from __future__ import annotations

import ipaddress
import socket

from pensieve.utils import PensieveError
from pensieve.utils.settings import ServerSettings

BUILTIN_KEY: str = ServerSettings.model_fields["api_key"].default


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP) if host else []
    except (socket.gaierror, UnicodeError):
        return False  # not resolvable here: binding fails anyway, and it is not loopback
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_exposure(host: str, api_key: str | None) -> None:
    """Raise PensieveError for a non-loopback address served without a key of the operator's."""
    if is_loopback(host):
        return
    key = api_key or ""
    if key and key != BUILTIN_KEY:
        return
    why = "no API key is set" if not key else f"the API key is the built-in public one ({BUILTIN_KEY})"
    raise PensieveError(
        f"refusing to listen on {host or 'every address'}: it is reachable from other "
        f"machines and {why}. Set a key of your own (server.api_key, PENSIEVE_API_KEY or "
        "--api-key), or bind 127.0.0.1 (server.host)"
    )
