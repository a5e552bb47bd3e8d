from typing import Any

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.validators import UnicodeUsernameValidator

from teams.models import Team

from .services import teams_invitable_by


class ProfileForm(forms.Form):
    display_name = forms.CharField(label="Display name", max_length=150, required=False)
    email = forms.EmailField(label="E-mail address", required=False)


class InvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail address")
    team = forms.ModelChoiceField(label="Team", queryset=Team.objects.none(), empty_label=None)

    def __init__(self, *args: Any, inviter: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams_invitable_by(inviter)  # type: ignore[attr-defined]


class InvitationSignUpForm(forms.Form):
    username = forms.CharField(
        label="Username", max_length=150, validators=[UnicodeUsernameValidator()]
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Password again", strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )  # fmt: skip

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise forms.ValidationError("This username is taken.")
        return username

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("password1") and data.get("password1") != data.get("password2"):
            self.add_error("password2", "The two passwords differ.")
        return data
