"""The client's address behind the documented reverse proxies (docs/deploy.md)."""

import ipaddress
from typing import Any

from django.conf import settings


def client_address(request: Any) -> str | None:
    """The address sign-in throttling counts: the entry our outermost proxy wrote
    into X-Forwarded-For, or the connection's address without a proxy.

    Each proxy appends the address it was reached from; a client may send any
    entries of its own before those, so only the last `PROXY_COUNT` are trusted.
    Not django-ipware: it counts a client that sends X-Forwarded-For entries of its
    own (or a stray quote) at the proxy's address, shared with everyone doing so.
    """
    count = settings.PROXY_COUNT
    hops = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    if count and len(hops) >= count:
        try:
            return str(ipaddress.ip_address(hops[-count].strip()))
        except ValueError:
            pass  # no proxy wrote it: fewer proxies than configured
    address: str | None = request.META.get("REMOTE_ADDR")
    return address
