"""One real mutual-TLS handshake with a gRPC server, and why it failed when it did.

The doctor dials the aggregator as the daemon would (its own certificate and key, the
federation CA, the certificate name the config expects, ALPN ``h2``) and then exchanges the
HTTP/2 connection preface, so a server that refuses our certificate is seen: under TLS 1.3
the client's side of the handshake completes before the server has checked the client's
certificate, and the refusal arrives as an alert on the first read. gRPC's own channel only
says "not ready"; the standard ``ssl`` module tells the cases apart:

- ``UNREACHABLE``: no TCP connection (name not resolved, refused, no route, no answer within
  the timeout: a firewall that drops);
- ``NAME_MISMATCH``: the server's certificate does not carry the expected name;
- ``UNTRUSTED_SERVER``: its certificate is not from this federation's CA (or expired);
- ``REFUSED``: the server refused our certificate, or closed the connection;
- ``LOCAL``: our own certificate or key cannot be used (the doctor's other lines say why).

Every step shares one deadline, so the probe takes at most ``timeout_s``.
"""

from __future__ import annotations

import enum
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Handshake", "Outcome", "handshake", "split_address"]

_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_FRAME_HEADER = 9
_H2_SETTINGS = 0x4


class Outcome(enum.Enum):
    """How the handshake ended."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    NAME_MISMATCH = "name_mismatch"
    UNTRUSTED_SERVER = "untrusted_server"
    REFUSED = "refused"
    LOCAL = "local"


@dataclass(frozen=True)
class Handshake:
    """What the handshake found.

    Args:
        outcome: how it ended.
        detail: one line: what happened, in the TLS library's words where it has some.
        seconds: how long it took.
    """

    outcome: Outcome
    detail: str
    seconds: float


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a host and a port.

    Raises:
        ValueError: no port, or a port that is not a number in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not host:port: {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def handshake(
    address: str, *, server_name: str, ca: Path, cert: Path, key: Path, timeout_s: float
) -> Handshake:
    """Connect to ``address`` and complete mutual TLS as ``cert``, expecting ``server_name``.

    Args:
        address: ``host:port`` to dial.
        server_name: the name the server's certificate must carry (SNI and name check).
        ca: the federation CA certificate: the only root trusted.
        cert, key: our certificate and its TLS key, presented to the server.
        timeout_s: the longest the whole probe may take.
    """
    started = time.monotonic()

    def done(outcome: Outcome, detail: str) -> Handshake:
        return Handshake(outcome, detail, time.monotonic() - started)

    def left() -> float:
        return max(0.001, timeout_s - (time.monotonic() - started))

    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
        ctx.set_alpn_protocols(["h2"])
    except (OSError, ssl.SSLError, ValueError) as exc:
        return done(Outcome.LOCAL, f"our certificate, key or CA cannot be loaded: {exc}")
    try:
        host, port = split_address(address)
    except ValueError as exc:
        return done(Outcome.UNREACHABLE, str(exc))
    try:
        raw = _connect(host, port, left=left)
    except socket.gaierror as exc:
        return done(Outcome.UNREACHABLE, f"cannot resolve {host!r}: {exc.strerror}")
    except TimeoutError:
        return done(Outcome.UNREACHABLE, f"no answer from {address} within {timeout_s:g} s")
    except OSError as exc:
        return done(Outcome.UNREACHABLE, f"cannot connect to {address}: {exc.strerror or exc}")
    try:
        with raw:
            return _tls(raw, ctx, server_name=server_name, left=left, done=done)
    except TimeoutError:
        return done(
            Outcome.UNREACHABLE, f"{address} accepted TCP but TLS did not finish in {timeout_s:g} s"
        )


def _connect(host: str, port: int, *, left: Callable[[], float]) -> socket.socket:
    """A TCP connection to ``host:port`` within the deadline, the name lookup included.

    ``getaddrinfo`` takes no timeout (a dead resolver can hold it for tens of seconds), so it
    runs on a daemon thread that the deadline abandons.

    Raises:
        socket.gaierror: the name does not resolve.
        TimeoutError: the deadline passed.
        OSError: no address accepted the connection (the last address's error).
    """
    found: list[list[tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]]] = []
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            found.append(list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=lookup, name="doctor-dns", daemon=True)
    thread.start()
    thread.join(left())
    if failed:
        raise failed[0]
    if not found:
        raise TimeoutError(f"resolving {host!r}")
    error: OSError = OSError(f"{host!r} has no address")
    for family, kind, proto, _, addr in found[0]:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left())
            sock.connect(addr)
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error


def _tls(
    raw: socket.socket,
    ctx: ssl.SSLContext,
    *,
    server_name: str,
    left: Callable[[], float],
    done: Callable[[Outcome, str], Handshake],
) -> Handshake:
    raw.settimeout(left())
    try:
        tls = ctx.wrap_socket(raw, server_hostname=server_name)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            return done(
                Outcome.NAME_MISMATCH,
                f"the server's certificate does not carry the name {server_name!r}",
            )
        return done(Outcome.UNTRUSTED_SERVER, f"the server's certificate: {exc.verify_message}")
    except ssl.SSLError as exc:
        return done(Outcome.REFUSED, f"TLS refused: {exc.reason or exc}")
    except (ConnectionError, ssl.SSLEOFError) as exc:
        return done(Outcome.REFUSED, f"the server closed the connection during TLS: {exc}")
    with tls:
        try:
            tls.settimeout(left())
            tls.sendall(_H2_PREFACE + _H2_EMPTY_SETTINGS)
            head = tls.recv(_H2_FRAME_HEADER)
        except ssl.SSLError as exc:
            return done(Outcome.REFUSED, f"the server refused our certificate: {exc.reason or exc}")
        except ConnectionError as exc:
            return done(Outcome.REFUSED, f"the server closed the connection: {exc}")
        if not head:
            return done(Outcome.REFUSED, "the server closed the connection after TLS")
        if len(head) < 4 or head[3] != _H2_SETTINGS:
            return done(Outcome.REFUSED, "the server does not speak gRPC (HTTP/2) here")
        version = tls.version() or "TLS"
    return done(Outcome.OK, f"{version}, server certificate {server_name!r}")
