from django.urls import path

from . import views, web

urlpatterns = [
    path("v1/models", views.models, name="api-models"),
    path("v1/chat/completions", views.chat_completions, name="api-chat-completions"),
    path("v1/messages", views.messages, name="api-messages"),
    path("settings/tokens/", web.tokens, name="api-tokens"),
    path("settings/tokens/<int:token_id>/revoke/", web.token_revoke_view, name="api-token-revoke"),
]
