from django.contrib import admin
from django.http import HttpRequest

from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "hint", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "owner__username"]
    readonly_fields = ["owner", "name", "hint", "created_at", "last_used_at"]
    exclude = ["secret_hash"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
