"""Sign-in throttling counts the real client address, behind nginx and without it."""

import httpx
import pytest

from tests.conftest import PASSWORD, LiveServer

pytestmark = [pytest.mark.live, pytest.mark.postgres]

LOCKED_OUT = "Too many failed sign-ins"
CLIENT_A = "198.51.100.7"
CLIENT_B = "198.51.100.8"


def sign_in(
    server: LiveServer, *, password: str, forwarded_for: str | None = None
) -> httpx.Response:
    """One sign-in as alice from a fresh browser; `forwarded_for` is the header
    daphne receives, as nginx's `$proxy_add_x_forwarded_for` writes it."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        client.get("/accounts/login/")
        return client.post(
            "/accounts/login/",
            data={
                "username": "alice",
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )


def fail_until_locked_out(server: LiveServer, *, forwarded_for: str | None = None) -> None:
    """Five wrong passwords for alice: the fifth answer is the lockout page."""
    for attempt in range(1, 6):
        response = sign_in(server, password="wrong-password", forwarded_for=forwarded_for)
        if attempt < 5:
            assert response.status_code == 200, response.text[:500]
            assert "Your username and password didn't match" in response.text
    assert response.status_code == 429
    assert LOCKED_OUT in response.text


def test_two_clients_behind_one_proxy_are_throttled_apart(live_server_factory) -> None:
    server = live_server_factory(DJANGO_PROXY_COUNT="1")
    fail_until_locked_out(server, forwarded_for=CLIENT_A)

    # Client A stays locked out, even with the right password, and even when it
    # sends its own X-Forwarded-For (nginx appends the real address after it).
    for forwarded_for in (CLIENT_A, f"203.0.113.99, {CLIENT_A}", f'", {CLIENT_A}'):
        response = sign_in(server, password=PASSWORD, forwarded_for=forwarded_for)
        assert response.status_code == 429, forwarded_for
        assert LOCKED_OUT in response.text

    # Client B, behind the same proxy, still signs in as alice.
    response = sign_in(server, password=PASSWORD, forwarded_for=CLIENT_B)
    assert response.status_code == 302, response.text[:500]
    assert response.headers["location"] == "/"


def test_without_a_proxy_a_forged_forwarded_for_does_not_escape_lockout(
    live_server_factory,
) -> None:
    # Empty: the default (no proxy), whatever a local .env says.
    server = live_server_factory(DJANGO_PROXY_COUNT="")
    fail_until_locked_out(server)

    # The attacker is still locked out at its real address, whatever it forwards.
    for forwarded_for in ("203.0.113.5", f"203.0.113.6, {CLIENT_B}"):
        response = sign_in(server, password=PASSWORD, forwarded_for=forwarded_for)
        assert response.status_code == 429, forwarded_for
        assert LOCKED_OUT in response.text
