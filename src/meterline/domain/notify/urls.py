"""What a webhook URL must be before a channel is saved.

The dispatcher sends with httpx; the address check (:mod:`meterline.domain.notify.targets`) and the
masked form shown to readers use ``urllib``. A URL both parsers read the same way, and that names
a real host, is accepted; anything else is refused at the API with a reason, instead of being
stored and failing at every delivery (or, worse, being read differently by the check and the
sender). A URL is refused when:

- it is longer than :data:`MAX_URL_LENGTH` characters, or holds whitespace, control characters
  or a backslash (which browsers and ``urllib`` read differently);
- either parser rejects it, or they disagree on its host or port (``:٣`` is port 3 to one and
  an error to the other);
- its scheme is not ``http`` or ``https``;
- it carries user info (``user:password@``): credentials belong in ``customHeaders``, which are
  masked for readers, and a URL's user info is where host-confusion tricks hide;
- its port is 0 or outside 1-65535;
- its host is neither an IP address nor a DNS name of letters, digits and hyphens (RFC 1123
  labels, international names in their IDNA form).
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported where used: the CLI's --help must not load the HTTP client
    import httpx

MAX_URL_LENGTH = 2048
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)
_SHAPE = "url must be an absolute http:// or https:// URL"


def url_problems(url: str) -> list[str]:
    """Why ``url`` cannot be a webhook target (see the module doc); empty when it can."""
    if len(url) > MAX_URL_LENGTH:
        return [f"url is longer than {MAX_URL_LENGTH} characters"]
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        return ["url must not contain whitespace, control characters or backslashes"]
    import httpx

    try:
        parts, sent = urlsplit(url), httpx.URL(url)
        port = parts.port
    except (ValueError, httpx.InvalidURL):
        return [_SHAPE + " with a valid host and port"]
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return [_SHAPE]
    if "@" in parts.netloc:
        return ["url must not carry user info (user:password@); send credentials in customHeaders"]
    if port == 0:
        return ["url port must be between 1 and 65535"]
    if sent.host != parts.hostname or (sent.port != port and not _default(sent, port)):
        return ["url host or port is read differently by different URL parsers"]
    return _host_problems(parts.hostname, sent)


def _default(sent: httpx.URL, port: int | None) -> bool:
    """Whether httpx dropped ``port`` only because it is the scheme's default."""
    return sent.port is None and port == {"http": 80, "https": 443}[sent.scheme]


def _host_problems(host: str, sent: httpx.URL) -> list[str]:
    if ":" in host:  # only a bracketed host holds a colon
        return [] if _ipv6(host) else ["url host in brackets must be an IPv6 address without a zone"]
    if not _DNS_NAME.fullmatch(sent.raw_host.decode("ascii")):
        return [f"url host {host[:80]!r} must be an IP address or a DNS name (letters, digits, '-' and '.')"]
    return []


def _ipv6(host: str) -> bool:
    if "%" in host:
        return False  # a zone (fe80::1%eth0) names an interface of this machine
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
