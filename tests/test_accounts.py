"""Accounts people run themselves: password change and reset, the profile page,
invitations into a team, and signing out everywhere (sessions and open sockets)."""

import asyncio
import re
from datetime import timedelta

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client, RequestFactory
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts.adapters import nonce_issue, nonce_redeem
from accounts.models import Invitation, Profile
from accounts.services import invitation_create, team_join_from_provider
from accounts.signals import signed_out_everywhere
from teams.models import Membership, Team
from tests.chat_client import create_conversation
from tests.conftest import PASSWORD, SONNET, frames_until, open_chat_socket, signed_in_client

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-Different-long-password-77"


def signs_in(username: str, password: str) -> bool:
    """Whether the sign-in page accepts this username and password."""
    client = Client()
    response = client.post("/accounts/login/", {"username": username, "password": password})
    return response.status_code == 302


@pytest.fixture
def team(db):
    return Team.objects.create(name="Research")


@pytest.fixture
def other_team(db):
    return Team.objects.create(name="Sales")


@pytest.fixture
def team_admin(django_user_model, team):
    admin = django_user_model.objects.create_user(username="tess", password=PASSWORD)
    Membership.objects.create(user=admin, team=team, role=Membership.Role.ADMIN)
    return admin


class TestSignInPage:
    def test_without_a_provider_the_page_is_as_before(self, client, settings):
        page = client.get("/accounts/login/").content.decode()
        assert 'name="username"' in page and 'name="password"' in page
        assert "Sign in with" not in page
        assert "/accounts/password/reset/" in page

    def test_single_sign_on_is_not_offered_without_a_provider(self, client):
        assert client.post("/accounts/oidc/sso/login/").status_code == 404


ALLAUTH_PAGES = [
    "/accounts/inactive/", "/accounts/signup/", "/accounts/reauthenticate/",
    "/accounts/reauthenticate/code/", "/accounts/reauthenticate/code/confirm/", "/accounts/email/",
    "/accounts/confirm-email/", "/accounts/confirm-email/not-a-key/", "/accounts/password/set/",
    "/accounts/password/reset/", "/accounts/password/reset/done/",
    "/accounts/password/reset/key/done/", "/accounts/password/reset/key/1-not-a-key/",
    "/accounts/login/code/confirm/", "/accounts/3rdparty/", "/accounts/3rdparty/signup/",
    "/accounts/3rdparty/login/error/", "/accounts/3rdparty/login/cancelled/",
    "/accounts/oidc/sso/login/callback/", "/accounts/oidc/other/login/",
]  # fmt: skip


class TestAllauthPages:
    @pytest.mark.parametrize("signed_in_as_alice", [False, True], ids=["signed-out", "signed-in"])
    def test_every_page_it_adds_answers_without_a_server_error(self, user, signed_in_as_alice):
        client = signed_in_client(user) if signed_in_as_alice else Client()
        for path in ALLAUTH_PAGES:
            assert client.get(path).status_code < 500, path

    def test_sign_up_without_an_invitation_is_closed(self, client):
        response = client.post(
            "/accounts/signup/",
            {"email": "eve@example.com", "username": "eve", "password1": NEW_PASSWORD,
             "password2": NEW_PASSWORD},
        )  # fmt: skip
        assert not get_user_model().objects.filter(username="eve").exists()
        assert response.status_code in (200, 302)


class TestOidcOnly:
    def test_passwords_of_people_who_are_not_staff_are_refused(self, user, settings):
        settings.OIDC_ONLY = True
        assert not signs_in("alice", PASSWORD)
        user.is_staff = True
        user.save()
        assert signs_in("alice", PASSWORD)

    def test_the_admin_refuses_them_too(self, django_user_model, team, settings):
        tess = django_user_model.objects.create_user(username="tess", password=PASSWORD)
        Membership.objects.create(user=tess, team=team, role=Membership.Role.ADMIN)
        client = Client()
        form = {"username": "tess", "password": PASSWORD, "next": "/admin/"}
        settings.OIDC_ONLY = True
        assert client.post("/admin/login/", form).status_code == 200  # the form again
        settings.OIDC_ONLY = False
        assert client.post("/admin/login/", form).status_code == 302


class TestPasswordChange:
    def test_a_person_changes_their_password_and_signs_in_with_the_new_one(self, user):
        client = signed_in_client(user)
        page = client.get("/accounts/password/change/")
        assert page.status_code == 200
        response = client.post(
            "/accounts/password/change/",
            {"oldpassword": PASSWORD, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
        )
        assert response.status_code == 302 and response["Location"] == "/accounts/settings/"
        assert "Password successfully changed." in client.get("/accounts/settings/").text
        # This session stays signed in; the old password no longer works.
        assert client.get("/").status_code == 200
        assert signs_in("alice", NEW_PASSWORD)
        assert not signs_in("alice", PASSWORD)

    def test_a_wrong_current_password_changes_nothing(self, user):
        client = signed_in_client(user)
        response = client.post(
            "/accounts/password/change/",
            {"oldpassword": "not-it", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
        )
        assert response.status_code == 200
        assert "current password" in response.content.decode().lower()
        assert signs_in("alice", PASSWORD)

    def test_signed_out_visitors_are_sent_to_sign_in(self, client):
        response = client.get("/accounts/password/change/")
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


@pytest.mark.postgres
class TestPasswordReset:
    def test_a_forgotten_password_is_reset_through_the_emailed_link(self, client, user, settings):
        user.email = "alice@example.com"
        user.save()
        response = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
        assert response.status_code == 302
        assert len(mail.outbox) == 1
        message = mail.outbox[0]
        assert message.to == ["alice@example.com"]
        link = re.search(r"http://testserver(/accounts/password/reset/key/\S+)", message.body)
        assert link, message.body
        # allauth moves the key out of the address, then shows the form.
        page = client.get(link.group(1), follow=True)
        assert page.status_code == 200
        form_url = page.redirect_chain[-1][0] if page.redirect_chain else link.group(1)
        done = client.post(form_url, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
        assert done.status_code == 302
        assert signs_in("alice", NEW_PASSWORD)
        assert not signs_in("alice", PASSWORD)
        # The link works once.
        again = client.get(link.group(1), follow=True)
        assert "invalid" in again.content.decode().lower()

    def test_an_unknown_address_resets_nothing(self, client, user):
        client.post("/accounts/password/reset/", {"email": "nobody@example.com"})
        assert all("/accounts/password/reset/key/" not in m.body for m in mail.outbox)
        assert signs_in("alice", PASSWORD)


@pytest.mark.postgres
class TestProfile:
    def test_the_settings_page_links_password_and_api_tokens(self, user):
        page = signed_in_client(user).get("/accounts/settings/").content.decode()
        assert 'href="/accounts/password/change/"' in page
        assert 'href="/settings/tokens/"' in page and "API tokens" in page
        assert "Sign out everywhere" in page

    def test_display_name_and_email_are_saved(self, user):
        client = signed_in_client(user)
        response = client.post(
            "/accounts/settings/", {"display_name": "Alice A.", "email": "Alice@Example.com"}
        )
        assert response.status_code == 302
        user.refresh_from_db()
        assert user.email == "alice@example.com"
        assert Profile.objects.get(user=user).display_name == "Alice A."

    def test_an_address_of_another_account_is_refused_and_nothing_saved(self, user, other_user):
        other_user.email = "mallory@example.com"
        other_user.save()
        response = signed_in_client(user).post(
            "/accounts/settings/", {"display_name": "A", "email": "mallory@example.com"}
        )
        assert response.status_code == 400
        assert "Another account uses this e-mail address." in response.content.decode()
        user.refresh_from_db()
        assert user.email == "" and not Profile.objects.filter(user=user).exists()


def invite(inviter, email: str, team) -> str:
    """Invite through the page as `inviter`; the link it shows."""
    response = signed_in_client(inviter).post(
        "/accounts/invitations/new/", {"email": email, "team": team.pk}
    )
    assert response.status_code == 200, response.content.decode()[:500]
    link = re.search(r'value="http://testserver(/accounts/invitations/[^"]+/)"',
                     response.content.decode())  # fmt: skip
    assert link
    return link.group(1)


def accept(path: str, username: str) -> tuple[Client, object]:
    client = Client()
    response = client.post(
        path, {"action": "password", "username": username, "password1": NEW_PASSWORD,
               "password2": NEW_PASSWORD},
    )  # fmt: skip
    return client, response


@pytest.mark.postgres
class TestInvitations:
    def test_a_team_admin_invites_someone_who_sets_a_password_and_joins(self, team_admin, team):
        path = invite(team_admin, "nina@example.com", team)
        assert mail.outbox[-1].to == ["nina@example.com"]
        assert path in mail.outbox[-1].body
        # Only a hash of the link's token is stored.
        token = path.rstrip("/").rsplit("/", 1)[1]
        assert not Invitation.objects.filter(token_hash__contains=token).exists()
        page = Client().get(path)
        assert page.status_code == 200 and "Join the team Research" in page.content.decode()
        client, response = accept(path, "nina")
        assert response.status_code == 302
        nina = get_user_model().objects.get(username="nina")
        assert nina.email == "nina@example.com"
        assert Membership.objects.get(user=nina).team == team
        assert Membership.objects.get(user=nina).role == Membership.Role.MEMBER
        assert client.get("/").status_code == 200  # signed in
        assert signs_in("nina", NEW_PASSWORD)

    def test_a_used_invitation_cannot_be_used_again(self, team_admin, team):
        path = invite(team_admin, "nina@example.com", team)
        accept(path, "nina")
        _, again = accept(path, "nina2")
        assert again.status_code == 410
        assert "already been used" in again.content.decode()
        assert not get_user_model().objects.filter(username="nina2").exists()

    def test_an_expired_invitation_is_refused(self, team_admin, team):
        path = invite(team_admin, "nina@example.com", team)
        Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
        page = Client().get(path)
        assert page.status_code == 410 and "expired" in page.content.decode()
        _, response = accept(path, "nina")
        assert response.status_code == 410
        assert not get_user_model().objects.filter(username="nina").exists()

    def test_an_unknown_link_is_refused(self, client):
        response = client.get("/accounts/invitations/not-a-real-token/")
        assert response.status_code == 410 and "not valid" in response.content.decode()

    def test_a_team_admin_cannot_invite_into_another_team(self, team_admin, other_team):
        response = signed_in_client(team_admin).post(
            "/accounts/invitations/new/", {"email": "x@example.com", "team": other_team.pk}
        )
        assert response.status_code == 400
        assert not Invitation.objects.exists() and not mail.outbox
        with pytest.raises(PermissionDenied):
            invitation_create(invited_by=team_admin, email="x@example.com", team=other_team)

    def test_people_who_are_not_admins_cannot_invite(self, user, team):
        assert signed_in_client(user).get("/accounts/invitations/new/").status_code == 403
        with pytest.raises(PermissionDenied):
            invitation_create(invited_by=user, email="x@example.com", team=team)

    def test_an_admin_invites_into_any_team(self, django_user_model, team, other_team):
        boss = django_user_model.objects.create_superuser(username="boss", password=PASSWORD)
        path = invite(boss, "sam@example.com", other_team)
        accept(path, "sam")
        assert Membership.objects.get(user__username="sam").team == other_team

    def test_a_signed_in_person_joins_with_their_account(self, team_admin, team, user):
        path = invite(team_admin, "alice@example.com", team)
        response = signed_in_client(user).post(path, {"action": "join"})
        assert response.status_code == 302
        assert Membership.objects.get(user=user).team == team

    def test_someone_in_another_team_is_not_moved(self, team_admin, team, other_team, user):
        Membership.objects.create(user=user, team=other_team)
        path = invite(team_admin, "alice@example.com", team)
        response = signed_in_client(user).post(path, {"action": "join"})
        assert response.status_code == 410
        assert Membership.objects.get(user=user).team == other_team
        assert Invitation.objects.get().used_at is None

    def test_invitations_are_listed_in_the_admin_for_their_team_only(
        self, team_admin, team, other_team, django_user_model
    ):
        boss = django_user_model.objects.create_superuser(username="boss", password=PASSWORD)
        invitation_create(invited_by=boss, email="in@example.com", team=team)
        invitation_create(invited_by=boss, email="out@example.com", team=other_team)
        page = signed_in_client(team_admin).get("/admin/accounts/invitation/")
        assert page.status_code == 200
        assert "in@example.com" in page.content.decode()
        assert "out@example.com" not in page.content.decode()


@pytest.mark.django_db(transaction=True)
class TestSignOutEverywhere:
    async def test_every_session_ends_and_an_open_socket_is_closed(self, user, conversation):
        laptop = await sync_to_async(signed_in_client)(user)
        phone = await sync_to_async(signed_in_client)(user)
        socket = await open_chat_socket(conversation, laptop)
        heard: list[object] = []

        def listener(sender, user, **kwargs):
            heard.append(user.pk)

        signed_out_everywhere.connect(listener)
        try:
            response = await sync_to_async(phone.post)("/accounts/sign-out-everywhere/")
        finally:
            signed_out_everywhere.disconnect(listener)
        assert response.status_code == 302
        # The idle socket hears it at once, without sending anything.
        frames = await frames_until(socket, "signed out")
        assert "Reload the page" in frames[-1]
        assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
        for client in (laptop, phone):
            page = await sync_to_async(client.get)("/")
            assert page.status_code == 302 and page["Location"].startswith("/accounts/login/")
        assert heard == [user.pk]

    async def test_other_people_stay_signed_in(self, user, other_user):
        theirs = await sync_to_async(signed_in_client)(other_user)
        mine = await sync_to_async(signed_in_client)(user)
        await sync_to_async(mine.post)("/accounts/sign-out-everywhere/")
        assert (await sync_to_async(theirs.get)("/")).status_code == 200


class TestSignOnNonce:
    @given(st.text(max_size=40))
    def test_only_a_nonce_this_session_was_given_is_accepted_once(self, guess):
        request = RequestFactory().get("/")
        request.session = {}  # type: ignore[assignment]
        issued = [nonce_issue(request) for _ in range(3)]
        assert nonce_redeem(request, guess) == (guess in issued)
        for nonce in issued:
            assert nonce_redeem(request, nonce) == (nonce != guess)
            assert not nonce_redeem(request, nonce)

    def test_a_missing_nonce_is_refused(self):
        request = RequestFactory().get("/")
        request.session = {}  # type: ignore[assignment]
        nonce_issue(request)
        assert not nonce_redeem(request, None)


@pytest.mark.live
def test_sign_out_everywhere_closes_an_idle_socket_on_a_real_server(live_server_factory, emulator):
    server = live_server_factory(**emulator.env())
    laptop = server.login()
    conversation_id = create_conversation(laptop, model=SONNET)
    phone = server.login()

    async def scenario() -> tuple[str, int]:
        cookie = "; ".join(f"{k}={v}" for k, v in laptop.cookies.items())
        async with websockets.connect(
            f"{server.ws_url}/ws/conversations/{conversation_id}/",
            additional_headers={"Cookie": cookie},
            origin=server.url,
        ) as socket:
            response = await asyncio.to_thread(
                phone.post,
                "/accounts/sign-out-everywhere/",
                data={"csrfmiddlewaretoken": phone.cookies["csrftoken"]},
            )
            assert response.status_code == 302
            frame = str(await asyncio.wait_for(socket.recv(), timeout=10))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), timeout=10)
            assert closed.value.rcvd is not None
            return frame, closed.value.rcvd.code

    frame, code = asyncio.run(scenario())
    assert "You were signed out" in frame and code == 4401
    for client in (laptop, phone):
        assert client.get("/").headers["location"].startswith("/accounts/login/")


@pytest.mark.postgres
class TestTeamsFromTheProvider:
    CLAIMS = {"email": "ann@Research.example", "email_verified": True}

    @pytest.fixture
    def research(self, db):
        return Team.objects.create(name="Research", email_domains="research.example\n@lab.example")

    def test_a_verified_address_in_a_teams_domain_joins_it_as_a_member(self, user, research):
        assert team_join_from_provider(user=user, claims=self.CLAIMS) == research
        membership = Membership.objects.get(user=user)
        assert (membership.team, membership.role) == (research, Membership.Role.MEMBER)

    @pytest.mark.parametrize("verified", [False, None, "false", "yes"])
    def test_an_unverified_address_joins_nothing(self, user, research, verified):
        claims = {**self.CLAIMS, "email_verified": verified}
        assert team_join_from_provider(user=user, claims=claims) is None
        assert not Membership.objects.exists()

    def test_the_groups_claim_comes_before_the_domain(self, user, research, settings):
        settings.OIDC_TEAM_CLAIM = "groups"
        sales = Team.objects.create(name="Sales")
        claims = {**self.CLAIMS, "groups": ["Nobody", "Sales"]}
        assert team_join_from_provider(user=user, claims=claims) == sales

    def test_someone_in_a_team_stays_and_keeps_their_role(self, user, research, settings):
        settings.OIDC_TEAM_CLAIM = "groups"
        sales = Team.objects.create(name="Sales")
        Membership.objects.create(user=user, team=sales, role=Membership.Role.ADMIN)
        claims = {**self.CLAIMS, "groups": ["Research"]}
        assert team_join_from_provider(user=user, claims=claims) is None
        membership = Membership.objects.get(user=user)
        assert (membership.team, membership.role) == (sales, Membership.Role.ADMIN)

    @hypothesis_settings(
        max_examples=60, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )  # fmt: skip
    @given(
        claims=st.dictionaries(
            st.sampled_from(["groups", "email", "email_verified", "role", "roles"]),
            st.one_of(
                st.text(), st.lists(st.sampled_from(["Research", "admin", "Team admins"])),
                st.sampled_from(["x@research.example", "true"]), st.booleans(), st.none(),
            ),
        )
    )  # fmt: skip
    def test_no_claims_ever_make_a_team_admin(self, research, settings, claims):
        settings.OIDC_TEAM_CLAIM = "groups"
        person = get_user_model().objects.create_user(username="claimant")
        try:
            team = team_join_from_provider(user=person, claims=claims)
            roles = list(Membership.objects.filter(user=person).values_list("role", flat=True))
            assert roles == ([Membership.Role.MEMBER] if team else [])
        finally:
            person.delete()

    @pytest.mark.parametrize(
        "text", ["research", "exa mple.com", "http://x.example", "a@b.example"]
    )
    def test_a_team_refuses_what_is_not_a_domain(self, text):
        team = Team(name="Lab", email_domains=f"ok.example\n{text}")
        with pytest.raises(ValidationError, match="Not an e-mail domain"):
            team.full_clean()

    def test_the_admin_form_shows_the_error_and_saves_nothing(self, django_user_model):
        boss = django_user_model.objects.create_superuser(username="boss", password=PASSWORD)
        response = signed_in_client(boss).post(
            "/admin/teams/team/add/",
            {"name": "Lab", "email_domains": "not a domain", "allowed_models": "[]",
             "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"},
        )  # fmt: skip
        assert response.status_code == 200
        assert "Not an e-mail domain: not a domain" in response.content.decode()
        assert not Team.objects.filter(name="Lab").exists()
