"""The person's token page: make, name and revoke their API tokens."""

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from conversations.forms import StorableTextField

from .tokens import NAME_LENGTH, token_create, token_revoke, tokens_for


class TokenForm(forms.Form):
    name = StorableTextField(max_length=NAME_LENGTH, strip=True)


def _page(
    request: HttpRequest, form: TokenForm, *, secret: str = "", status: int = 200
) -> HttpResponse:
    context = {"form": form, "tokens": tokens_for(user=request.user), "secret": secret}
    response = render(request, "api/tokens.html", context, status=status)
    if secret:
        response["Cache-Control"] = "no-store"  # the secret is shown once, never cached
    return response


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """GET: the person's tokens. POST `name`: a new token, whose secret is shown only now."""
    if request.method == "GET":
        return _page(request, TokenForm())
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _page(request, form, status=400)
    try:
        _, secret = token_create(owner=request.user, name=form.cleaned_data["name"])
    except ValidationError as exc:
        form.add_error(None, exc)
        return _page(request, form, status=400)
    return _page(request, TokenForm(), secret=secret)


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of the person's tokens (someone else's, or a revoked one: nothing happens)."""
    token_revoke(owner=request.user, token_id=token_id)
    return redirect("api-tokens")
