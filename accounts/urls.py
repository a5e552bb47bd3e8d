"""Ahead of allauth's own URLs (chatsite/urls.py): the sign-in page stays Django's,
single sign-on gets a page when the provider is down, and the account pages."""

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("oidc/sso/login/", views.sso_login, name="sso-login"),
    path("oidc/sso/login/callback/", views.sso_callback, name="sso-callback"),
    path("settings/", views.account_settings, name="account-settings"),
    path("sign-out-everywhere/", views.sign_out_everywhere_view, name="sign-out-everywhere"),
    path("invitations/new/", views.invitation_new, name="invitation-new"),
    path("invitations/<str:token>/", views.invitation_accept_view, name="invitation-accept"),
]
