"""The admin site: staff as usual, plus reviewers and team admins within their scope."""

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest
from django.urls import path

from .review import may_review


class ReviewerLoginForm(AuthenticationForm):
    """The admin's sign-in, open to staff, reviewers and team admins."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if not (user.is_staff or may_review(user)):
            raise forms.ValidationError("This account may not use the admin.", code="invalid_login")


class ChatAdminSite(admin.AdminSite):
    """Staff as usual, plus reviewers and team admins, who see only what they may review."""

    site_header = "Claude chat administration"
    site_title = "Claude chat admin"
    index_title = "Review and administration"
    login_form = ReviewerLoginForm

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and (user.is_staff or may_review(user)))

    def get_urls(self) -> list[Any]:
        from .admin import usage_report

        return [
            path("usage/", self.admin_view(usage_report), name="usage-report"),
            *super().get_urls(),
        ]
