from django.contrib import admin

from .models import Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "monthly_budget_usd", "allowed_models", "created_at")
    search_fields = ("name",)
    inlines = [MembershipInline]


admin.site.register(Team, TeamAdmin)
