from django.contrib import admin

from .models import Conversation, Turn


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
