from django.contrib import admin
from django.urls import include, path

from conversations import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    # --- Accounts: the sign-in page (Django's, throttled by django-axes), single
    # sign-on, the account pages (accounts.urls), then the rest of django-allauth's
    # (password change and reset, the provider's callback…).
    path("accounts/", include("accounts.urls")),
    path("accounts/", include("allauth.urls")),
    # ---
    path("admin/", admin.site.urls),
    path("", include("api.urls")),
    path("", include("conversations.urls")),
    path("", include("review.urls")),
]
