"""The offline guard: the ``tiny`` preset never leaves the machine (ground layer).

:func:`block_network` installs an audit hook (PEP 578) that refuses every connection to a non-loopback address
and every DNS lookup of another host, whichever library opens the socket. :func:`require_network` is the one
check every entry point that may reach the hub or a registry makes first, so that a missing network is one clear
line at once instead of a minute of retries and a long traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from satlib.errors import OfflineError

#: Environment variables that make Hugging Face libraries refuse to touch the network.
HF_OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
HUB_HOST = "huggingface.co"


class NetworkBlockedError(OfflineError):
    """Raised when code running under an offline preset tries to reach a non-local address."""


_guard = {"installed": False, "active": False}


def _is_local(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # Unix sockets and the like never leave the machine.
    host = str(address[0])
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: not local


def _audit(event: str, args: tuple) -> None:
    if not _guard["active"]:
        return
    if event in {"socket.connect", "socket.sendto"} and not _is_local(args[1]):
        raise NetworkBlockedError(
            f"network access to {args[1]!r} blocked: the 'tiny' preset is offline; "
            "use PRESET='pythia' on a machine with network access"
        )
    if event == "socket.getaddrinfo" and not _is_local((args[0],)):
        raise NetworkBlockedError(
            f"DNS lookup of {args[0]!r} blocked: the 'tiny' preset is offline; "
            "use PRESET='pythia' on a machine with network access"
        )


def block_network(active: bool = True) -> None:
    """Forbid (or allow again) connections to non-loopback addresses in this process.

    Loopback stays open: Jupyter kernels talk to their clients over it.
    """
    if not _guard["installed"]:
        sys.addaudithook(_audit)
        _guard["installed"] = True
    _guard["active"] = active


def network_blocked() -> bool:
    """Whether :func:`block_network` is in force."""
    return bool(_guard["active"])


def network_available(host: str = HUB_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on ``port`` (False when the offline guard is on)."""
    if network_blocked():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_network(what: str, fix: str, host: str = HUB_HOST) -> None:
    """Raise :class:`OfflineError` (one line: ``what`` needs ``host``, then ``fix``) unless ``host`` answers."""
    if not network_available(host):
        raise OfflineError(f"{what} needs {host} and there is no network: {fix}")
