from django.urls import path, register_converter

from . import views


class ExportFormatConverter:
    """Only the formats an export comes in; any other suffix is 404 before the view."""

    regex = "|".join(views.EXPORT_EXTENSIONS)

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ExportFormatConverter, "export_format")

urlpatterns = [
    path(
        "conversations/<uuid:conversation_id>/export.<export_format:fmt>",
        views.conversation_export,
        name="conversation-export",
    ),
    path("turns/<int:turn_id>/feedback/", views.turn_feedback, name="turn-feedback"),
]
