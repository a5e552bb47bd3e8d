from django.urls import path

from . import views

urlpatterns = [
    path("", views.conversation_list, name="conversation-list"),
    path("conversations/", views.conversation_create, name="conversation-create"),
    path(
        "conversations/<uuid:conversation_id>/",
        views.conversation_detail,
        name="conversation-detail",
    ),
    path(
        "conversations/<uuid:conversation_id>/settings/",
        views.conversation_settings,
        name="conversation-settings",
    ),
]
