from django.urls import path

from . import views

urlpatterns = [
    path("", views.conversation_list, name="conversation-list"),
    path("conversations/", views.conversation_create, name="conversation-create"),
    path("sidebar/", views.sidebar_more, name="sidebar-more"),
    path("presets/", views.preset_list, name="preset-list"),
    path(
        "conversations/<uuid:conversation_id>/pin/",
        views.conversation_pin_view,
        name="conversation-pin",
    ),
    path(
        "conversations/<uuid:conversation_id>/archive/",
        views.conversation_archive_view,
        name="conversation-archive",
    ),
    path(
        "conversations/<uuid:conversation_id>/",
        views.conversation_detail,
        name="conversation-detail",
    ),
    path(
        "conversations/<uuid:conversation_id>/turns/<int:turn_id>/",
        views.conversation_turn,
        name="conversation-turn",
    ),
    path(
        "conversations/<uuid:conversation_id>/settings/",
        views.conversation_settings,
        name="conversation-settings",
    ),
    path(
        "conversations/<uuid:conversation_id>/rename/",
        views.conversation_rename_view,
        name="conversation-rename",
    ),
    path(
        "conversations/<uuid:conversation_id>/delete/",
        views.conversation_delete_view,
        name="conversation-delete",
    ),
    path(
        "conversations/<uuid:conversation_id>/turns/",
        views.conversation_turns_earlier,
        name="conversation-turns",
    ),
    path(
        "conversations/<uuid:conversation_id>/preset/",
        views.preset_create,
        name="preset-create",
    ),
    path(
        "conversations/<uuid:conversation_id>/share/",
        views.conversation_share_view,
        name="conversation-share",
    ),
    path("presets/<int:preset_id>/delete/", views.preset_delete_view, name="preset-delete"),
]
