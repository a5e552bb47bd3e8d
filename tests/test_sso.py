"""Single sign-on through a real OpenID Provider on loopback (panva's oidc-provider,
run by node from tests/oidc), driven through chromium: its own login and consent
pages, the code flow with PKCE, accounts made and reused, teams from its claims, a
provider that is down, and OIDC_ONLY."""

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, LiveServer, free_port

pytestmark = [pytest.mark.live, pytest.mark.browser]

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "chat-tests"
CLIENT_SECRET = "test-only-client-secret-0123456789"
CALLBACK = "/accounts/oidc/sso/login/callback/"
PROVIDER_NAME = "Example ID"
# The people the provider knows (its login page takes any password for them).
PEOPLE = {
    "bob": {
        "email": "bob@example.com",
        "email_verified": True,
        "preferred_username": "bob",
        "name": "Bob Builder",
        "groups": ["Research"],
    },
    "dora": {
        "email": "dora@research.example",
        "email_verified": True,
        "name": "Dora Explorer",
        "groups": ["Unknown group"],
    },
    "uma": {
        "email": "uma@research.example",
        "email_verified": False,
        "preferred_username": "uma",
    },
    "alice-sso": {
        "email": "alice@example.com",
        "email_verified": True,
        "preferred_username": "alice",
        "name": "Alice from SSO",
    },
}


@dataclass
class OpenIDProvider:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_provider(port: int, redirect_uri: str, log_path: Path) -> OpenIDProvider:
    """Start the provider and wait until it serves its discovery document."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the OpenID Provider of these tests needs it")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").exists():
        pytest.fail("tests/oidc/node_modules is missing: `make test` installs it (npm ci)")
    env = {
        **os.environ,
        "OIDC_TEST_PORT": str(port),
        "OIDC_TEST_CLIENT_ID": CLIENT_ID,
        "OIDC_TEST_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_TEST_REDIRECT_URI": redirect_uri,
        "OIDC_TEST_ACCOUNTS": json.dumps(PEOPLE),
    }
    process = subprocess.Popen(
        [node, "provider.mjs"], cwd=OIDC_DIR, env=env, stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    provider = OpenIDProvider(port, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the OpenID Provider exited: {log_path.read_text()}")
        try:
            discovery = httpx.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=1)
            if discovery.status_code == 200:
                return provider
        except httpx.HTTPError:
            time.sleep(0.05)
    provider.stop()
    raise RuntimeError(f"the OpenID Provider did not start: {log_path.read_text()}")


@dataclass
class Site:
    server: LiveServer
    provider: OpenIDProvider | None


@pytest.fixture
def sso_site(live_server_factory, tmp_path) -> Iterator[Callable[..., Site]]:
    """A live server configured for single sign-on against the provider (which runs
    unless `provider_up=False`: then nothing answers at the issuer)."""
    providers: list[OpenIDProvider] = []

    def factory(*, provider_up: bool = True, setup: str = "", **extra_env: str) -> Site:
        port = free_port()
        server = live_server_factory(
            OIDC_ISSUER=f"http://127.0.0.1:{port}",
            OIDC_CLIENT_ID=CLIENT_ID,
            OIDC_CLIENT_SECRET=CLIENT_SECRET,
            OIDC_NAME=PROVIDER_NAME,
            OIDC_TIMEOUT="3",
            **extra_env,
        )
        if setup:
            server.manage("shell", "-c", setup)
        provider = None
        if provider_up:
            provider = start_provider(port, server.url + CALLBACK, tmp_path / f"oidc{port}.log")
            providers.append(provider)
        return Site(server, provider)

    yield factory
    for provider in providers:
        provider.stop()


@pytest.fixture
def browser_page(browser):
    """A chromium page that reaches only loopback (the provider's pages load a web font)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def sign_in_through_provider(page: Any, site: Site, login: str, *, consent: bool = True) -> None:
    """From our sign-in page, through the provider's own login and consent pages."""
    page.goto(site.server.url + "/accounts/login/")
    page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").click()
    assert site.provider is not None
    page.wait_for_url(f"{site.provider.issuer}/interaction/**")
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("anything")
    page.get_by_role("button", name="Sign-in").click()
    if consent:
        page.get_by_role("button", name="Continue").click()
    page.wait_for_url(site.server.url + "/")


def sign_out(page: Any) -> None:
    page.locator(".account-menu summary").click()  # the account menu in the sidebar
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/accounts/login/")


def query(server: LiveServer, expression: str) -> Any:
    """Evaluate a Python expression against the server's database; its value as JSON."""
    code = (
        "import json; from django.contrib.auth import get_user_model; U = get_user_model(); "
        "from allauth.socialaccount.models import SocialAccount; "
        "from teams.models import Membership, Team; "
        f"print(json.dumps({expression}))"
    )
    return json.loads(server.manage("shell", "-c", code).strip().splitlines()[-1])


def test_first_sign_in_makes_the_account_and_the_second_reuses_it(sso_site, browser_page):
    site = sso_site()
    page = browser_page
    sign_in_through_provider(page, site, "bob")
    assert page.locator(".who").inner_text() == "bob"
    # The provider's code came back with its state and PKCE verifier checked; the
    # account has the provider's address and name.
    assert query(site.server, "list(U.objects.filter(username='bob').values_list('email'))") == [
        ["bob@example.com"]
    ]
    assert query(site.server, "U.objects.get(username='bob').profile.display_name") == (
        "Bob Builder"
    )
    assert query(site.server, "U.objects.get(username='bob').has_usable_password()") is False
    sign_out(page)
    # The provider remembers the person and the consent: straight back, same account.
    page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").click()
    page.wait_for_url(site.server.url + "/")
    assert page.locator(".who").inner_text() == "bob"
    assert query(site.server, "U.objects.filter(email='bob@example.com').count()") == 1
    assert query(site.server, "list(SocialAccount.objects.values_list('provider', 'uid'))") == [
        ["sso", "bob"]
    ]


def test_a_taken_username_gets_a_unique_one(sso_site, browser_page):
    # alice (a password account, no address) exists; the provider's alice is someone else.
    site = sso_site()
    sign_in_through_provider(browser_page, site, "alice-sso")
    username = browser_page.locator(".who").inner_text()
    assert username != "alice" and username.startswith("alice")
    assert query(site.server, "U.objects.get(username='alice').has_usable_password()") is True


def test_an_existing_account_is_linked_by_its_verified_address(sso_site, browser_page):
    setup = (
        "from django.contrib.auth import get_user_model; "
        "from allauth.account.models import EmailAddress; "
        "alice = get_user_model().objects.get(username='alice'); "
        "alice.email = 'alice@example.com'; alice.save(); "
        "EmailAddress.objects.create(user=alice, email='alice@example.com', verified=True, "
        "primary=True)"
    )
    site = sso_site(setup=setup)
    sign_in_through_provider(browser_page, site, "alice-sso")
    assert browser_page.locator(".who").inner_text() == "alice"
    assert query(site.server, "U.objects.count()") == 2  # alice and mallory, no one new
    assert query(site.server, "U.objects.get(username='alice').has_usable_password()") is True


def test_an_address_in_a_teams_domain_puts_the_person_in_it(sso_site, browser_page):
    setup = (
        "from teams.models import Team; "
        "Team.objects.create(name='Research', email_domains='research.example\\nlab.example')"
    )
    site = sso_site(setup=setup)
    sign_in_through_provider(browser_page, site, "dora")
    membership = (
        "list(Membership.objects.filter(user__username='dora').values_list('team__name', 'role'))"
    )
    assert query(site.server, membership) == [["Research", "member"]]
    # An address the provider does not say is verified puts no one in a team.
    sign_out(browser_page)
    browser_page.context.clear_cookies()
    sign_in_through_provider(browser_page, site, "uma")
    assert query(site.server, "Membership.objects.filter(user__username='uma').count()") == 0


def test_the_groups_claim_puts_the_person_in_the_team_never_as_admin(sso_site, browser_page):
    setup = "from teams.models import Team; Team.objects.create(name='Research')"
    site = sso_site(setup=setup, OIDC_TEAM_CLAIM="groups",
                    OIDC_SCOPES="openid profile email groups")  # fmt: skip
    sign_in_through_provider(browser_page, site, "bob")
    membership = (
        "list(Membership.objects.filter(user__username='bob').values_list('team__name', 'role'))"
    )
    assert query(site.server, membership) == [["Research", "member"]]
    # A group that names no team changes nothing.
    sign_out(browser_page)
    browser_page.context.clear_cookies()
    sign_in_through_provider(browser_page, site, "dora")
    assert query(site.server, "Membership.objects.filter(user__username='dora').count()") == 0


def test_a_provider_that_is_down_gets_a_clear_message(sso_site, browser_page):
    site = sso_site(provider_up=False)
    page = browser_page
    page.goto(site.server.url + "/accounts/login/")
    with page.expect_response(re.compile(r"/accounts/oidc/sso/login/$")) as answer:
        page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").click()
    assert answer.value.status == 503
    assert (
        page.get_by_role("alert")
        .inner_text()
        .startswith(f"Single sign-on cannot reach {PROVIDER_NAME} right now")
    )
    assert CLIENT_SECRET not in page.content()
    # Password sign-in still works meanwhile.
    page.get_by_role("link", name="Back to sign-in").click()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(site.server.url + "/")


def test_oidc_only_hides_password_sign_in_but_for_staff(sso_site, browser_page):
    setup = (
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_user(username='root', password='{PASSWORD}', "
        "is_staff=True)"
    )
    site = sso_site(setup=setup, OIDC_ONLY="true")
    page = browser_page
    page.goto(site.server.url + "/accounts/login/")
    assert page.get_by_label("Password").count() == 0
    assert page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").is_visible()
    # Staff follow the link to the password form; others are refused there.
    page.get_by_role("link", name="Staff: sign in with a password").click()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    assert page.get_by_role("alert").inner_text().startswith("Your username and password")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(site.server.url + "/")
    assert page.locator(".who").inner_text() == "root"
    # Everyone else signs in through the provider.
    sign_out(page)
    sign_in_through_provider(page, site, "bob")
    assert page.locator(".who").inner_text() == "bob"


def test_an_id_token_without_a_nonce_this_session_holds_is_refused(sso_site, browser_page):
    site = sso_site()
    first = browser_page
    first.goto(site.server.url + "/accounts/login/")
    first.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").click()
    assert site.provider is not None
    first.wait_for_url(f"{site.provider.issuer}/interaction/**")
    # Five later sign-ins started in another tab: the session keeps their nonces only.
    other = first.context.new_page()
    for _ in range(5):
        other.goto(site.server.url + "/accounts/login/")
        other.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").click()
        other.wait_for_url(f"{site.provider.issuer}/interaction/**")
    first.locator("input[name=login]").fill("bob")
    first.locator("input[name=password]").fill("anything")
    first.get_by_role("button", name="Sign-in").click()
    with first.expect_response(re.compile(re.escape(CALLBACK))) as answer:
        first.get_by_role("button", name="Continue").click()
    assert answer.value.status == 401
    assert "Single sign-on did not complete" in first.content()
    assert query(site.server, "U.objects.filter(username='bob').count()") == 0


def test_an_invitation_taken_up_by_single_sign_on_joins_the_team(sso_site, browser_page):
    site = sso_site()
    # The link's token is shown once: the shell prints it.
    token = site.server.manage(
        "shell", "-c",
        "from django.contrib.auth import get_user_model; "
        "from teams.models import Team; "
        "from accounts.services import invitation_create; "
        "boss = get_user_model().objects.create_superuser(username='boss', password='x'); "
        "team = Team.objects.create(name='Design'); "
        "print(invitation_create(invited_by=boss, email='bob@example.com', team=team).token)",
    ).split()[-1]  # fmt: skip
    page = browser_page
    page.goto(f"{site.server.url}/accounts/invitations/{token}/")
    page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").click()
    assert site.provider is not None
    page.wait_for_url(f"{site.provider.issuer}/interaction/**")
    page.locator("input[name=login]").fill("bob")
    page.locator("input[name=password]").fill("anything")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(site.server.url + "/")
    membership = (
        "list(Membership.objects.filter(user__username='bob').values_list('team__name', 'role'))"
    )
    assert query(site.server, membership) == [["Design", "member"]]
    # The link is used up.
    page.goto(f"{site.server.url}/accounts/invitations/{token}/")
    assert page.get_by_role("alert").inner_text() == "This invitation has already been used."
