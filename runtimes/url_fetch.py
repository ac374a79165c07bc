"""Fetching an image for the /url routes, refusing anything but public http(s) addresses."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from runtimes.http_errors import ApiError

__all__ = ["DEFAULT_URL_TIMEOUT", "MAX_REDIRECTS", "fetch_image_url", "is_public_address"]

DEFAULT_URL_TIMEOUT = 10.0
MAX_REDIRECTS = 3

#: Decides whether /url may connect to an address; :func:`is_public_address` unless replaced.
AddressCheck = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address: the only kind /url may connect to.

    Loopback, private, shared (CGNAT), link-local (cloud metadata services live there), multicast,
    reserved and unspecified addresses are refused, also when embedded in an IPv6 address
    (IPv4-mapped, 6to4, Teredo).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
            return is_public_address(address.ipv4_mapped)
        embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and not is_public_address(embedded):
            return False
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified
    )


def _resolve_public(host: str, port: int, address_check: AddressCheck) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ApiError(400, "BadRequestImageUrl", f"cannot resolve the URL's host {host!r} ({exc})") from None
    addresses = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        # Every address must pass, not just one: the connection may go to any of them.
        if not address_check(address):
            raise ApiError(
                400, "BadRequestImageUrl",
                f"the URL's host {host!r} resolves to {address}, which is not a public address; "
                "/url only fetches from the public internet",
            )
        addresses.append((family, sockaddr))
    if not addresses:
        raise ApiError(400, "BadRequestImageUrl", f"the URL's host {host!r} has no address")
    return addresses


def _connect_pinned(addresses: list[tuple[int, tuple[Any, ...]]], timeout: float) -> socket.socket:
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    assert error is not None
    raise error


def fetch_image_url(
    url: str,
    *,
    max_bytes: int,
    timeout: float = DEFAULT_URL_TIMEOUT,
    address_check: AddressCheck = is_public_address,
) -> bytes:
    """Download an image for /url, refusing anything that could reach the device's own network.

    The host name is resolved once and every address checked with ``address_check`` (by default
    :func:`is_public_address`); the connection then goes to a checked address (so DNS cannot answer
    differently a moment later), with the original host name kept for the Host header and TLS
    verification. Redirects are followed up to :data:`MAX_REDIRECTS` times, each hop checked the
    same way.

    Args:
        url: an http or https URL.
        max_bytes: the largest image accepted.
        timeout: the time limit for the whole download, in seconds.
        address_check: decides which resolved addresses may be connected to. The server passes
            the ``is_public_address`` its own module holds at call time, so that replacing
            ``runtimes.server.is_public_address`` (as tests do, to fetch from a local site) works.

    Returns:
        The response body of the final 200 answer.

    Raises:
        ApiError: 400 ``BadRequestImageUrl`` (refused, failed, timed out) or
            ``BadRequestImageSizeBytes`` (too large).
    """
    deadline = time.monotonic() + timeout
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ApiError(400, "BadRequestImageUrl", f"malformed URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ApiError(400, "BadRequestImageUrl", f"only http and https URLs can be fetched, not {scheme or 'this'!r}")
        if not parts.hostname:
            raise ApiError(400, "BadRequestImageUrl", "the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise ApiError(400, "BadRequestImageUrl", "URLs with credentials are not fetched")
        try:  # an internationalised name goes on the wire (Host header, TLS name) as its ASCII form
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise ApiError(400, "BadRequestImageUrl", f"the URL's host {parts.hostname!r} is not a valid name") from None
        port = port or (443 if scheme == "https" else 80)
        addresses = _resolve_public(host, port, address_check)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        connection = connection_class(host, port, timeout=remaining)
        # http.client would resolve the name again; connect to the address that was checked instead.
        connection._create_connection = (  # type: ignore[attr-defined]
            lambda *_args, _to=addresses, _timeout=remaining, **_kw: _connect_pinned(_to, _timeout)
        )
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            connection.request("GET", target, headers={"User-Agent": "edgevision-runtime", "Accept": "image/*"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise ApiError(400, "BadRequestImageUrl", f"the URL redirected (HTTP {response.status}) nowhere")
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status != 200:
                raise ApiError(400, "BadRequestImageUrl", f"fetching the URL answered HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ApiError(400, "BadRequestImageSizeBytes", f"the image at the URL is over {max_bytes} bytes")
            return _read_capped(response, connection, max_bytes, deadline)
        except TimeoutError:
            raise ApiError(400, "BadRequestImageUrl", f"fetching the URL took longer than {timeout:g} s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ApiError(400, "BadRequestImageUrl", f"cannot fetch the URL ({type(exc).__name__}: {exc})") from None
        finally:
            connection.close()
    if time.monotonic() >= deadline:
        raise ApiError(400, "BadRequestImageUrl", f"fetching the URL took longer than {timeout:g} s")
    raise ApiError(400, "BadRequestImageUrl", f"the URL redirected more than {MAX_REDIRECTS} times")


def _read_capped(response: http.client.HTTPResponse, connection: http.client.HTTPConnection, cap: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if connection.sock is not None:
            connection.sock.settimeout(remaining)
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise ApiError(400, "BadRequestImageSizeBytes", f"the image at the URL is over {cap} bytes")
        chunks.append(chunk)
