"""Invitations in the admin: admins see all, team admins their own team's. New ones are
made on the invitation page, which shows the single-use link once."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from .models import Invitation, Profile
from .services import teams_invitable_by


class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "team", "invited_by", "created_at", "expires_at", "status")
    list_filter = ("team", "used_at")
    search_fields = ("email",)
    fields = ("email", "team", "invited_by", "created_at", "expires_at", "used_at", "used_by")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Invitation]:
        teams = teams_invitable_by(request.user)
        return super().get_queryset(request).filter(team__in=teams).select_related("team")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return teams_invitable_by(request.user).exists()

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return teams_invitable_by(request.user).exists()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the invitation page makes them (it shows the link once)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Withdrawing an invitation: its link stops working.
        return teams_invitable_by(request.user).exists()

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        extra_context = {**(extra_context or {}), "subtitle": format_html(
            '<a href="{}">Invite someone</a>', reverse("invitation-new")
        )}  # fmt: skip
        return super().changelist_view(request, extra_context)

    @admin.display(description="status")
    def status(self, obj: Invitation) -> str:
        if obj.used_at:
            return "used"
        return "expired" if obj.expired else "open"


class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "display_name")
    search_fields = ("user__username", "display_name")
    autocomplete_fields = ["user"]


admin.site.register(Invitation, InvitationAdmin)
admin.site.register(Profile, ProfileAdmin)
