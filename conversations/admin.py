from django.contrib import admin

from .models import Conversation, Membership, Spend, Team, Turn, UserBudget


class TurnInline(admin.TabularInline):
    model = Turn
    extra = 0
    can_delete = False
    fields = (
        "position",
        "role",
        "state",
        "model",
        "content",
        "input_tokens",
        "output_tokens",
        "gateway_log_id",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    ordering = ("position",)

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("display_title", "owner", "model", "updated_at")
    list_filter = ("model",)
    search_fields = ("title", "owner__username")
    readonly_fields = ("id", "owner", "created_at", "updated_at")
    inlines = [TurnInline]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "monthly_budget_usd", "allowed_models", "created_at")
    search_fields = ("name",)
    inlines = [MembershipInline]


@admin.register(UserBudget)
class UserBudgetAdmin(admin.ModelAdmin):
    list_display = ("user", "monthly_budget_usd")
    autocomplete_fields = ["user"]
    search_fields = ("user__username",)


@admin.register(Spend)
class SpendAdmin(admin.ModelAdmin):
    """The ledger: read-only, so spend cannot be edited away."""

    list_display = (
        "created_at",
        "user",
        "team",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "estimated",
    )
    list_filter = ("model", "team", "estimated")
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
