from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ConversationsConfig(AppConfig):
    default = True
    default_auto_field = "django.db.models.BigAutoField"
    name = "conversations"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks


class ChatAdminConfig(admin_apps.AdminConfig):
    """The admin, with a site that lets reviewers and team admins in to their scope."""

    default = False
    default_site = "chatsite.admin_site.ChatAdminSite"
