"""The admin site: staff as usual, plus reviewers and team admins within their scope."""

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import path

from review.access import may_review


class ReviewerLoginForm(AuthenticationForm):
    """The admin's sign-in, open to staff, reviewers and team admins."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if not (user.is_staff or may_review(user)):
            raise forms.ValidationError("This account may not use the admin.", code="invalid_login")


class DeclaredAutocompleteJsonView(AutocompleteJsonView):
    """Answers only for a field an admin form declares in `autocomplete_fields`. Django's own
    answers for any foreign key to a searchable model, naming each match by `str()`: a
    conversation's is its title, which would be read there with no record."""

    admin_site: admin.AdminSite

    def process_request(self, request: HttpRequest) -> Any:
        # process_request is missing from django-stubs.
        term, model_admin, field, to_field = super().process_request(request)  # type: ignore[misc]
        if not _declares_autocomplete(self.admin_site, source_field=field):
            raise PermissionDenied
        return term, model_admin, field, to_field


def _declares_autocomplete(site: admin.AdminSite, *, source_field: Any) -> bool:
    """Whether an admin (or one of its inlines) on `site` uses `source_field` as an autocomplete."""
    for model_admin in site._registry.values():
        for form_admin in (model_admin, *model_admin.inlines):
            if (
                form_admin.model is source_field.model
                and source_field.name in form_admin.autocomplete_fields
            ):
                return True
    return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records no one may add, change or delete in the admin."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ChatAdminSite(admin.AdminSite):
    """Staff as usual, plus reviewers and team admins, who see only what they may review."""

    site_header = "Claude chat administration"
    site_title = "Claude chat admin"
    index_title = "Review and administration"
    login_form = ReviewerLoginForm
    # Breadcrumbs and the index do its job; at 1280 px the review list needs the width.
    enable_nav_sidebar = False

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and (user.is_staff or may_review(user)))

    def autocomplete_view(self, request: HttpRequest) -> HttpResponse:
        view = DeclaredAutocompleteJsonView.as_view(admin_site=self)
        return view(request)  # type: ignore[return-value]  # a JsonResponse

    def get_urls(self) -> list[Any]:
        from billing.admin import usage_report

        return [
            path("usage/", self.admin_view(usage_report), name="usage-report"),
            *super().get_urls(),
        ]
