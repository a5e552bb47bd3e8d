from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import ProhibitNullCharactersValidator

from .text import validate_storable_text

SAMPLING_CHOICES = [
    ("default", "Model default"),
    ("temperature", "Temperature"),
    ("top_p", "top_p"),
]


def model_choices() -> list[tuple[str, str]]:
    return [(model_id, str(spec["label"])) for model_id, spec in settings.CHAT_MODELS.items()]


class StorableTextField(forms.CharField):
    """Text a person submits, under the one input rule (conversations/text.py)."""

    default_validators = [validate_storable_text]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The rule already refuses NUL; Django's own check would add a second message.
        self.validators = [
            v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)
        ]


def sampling_of(obj: Any) -> str:
    if obj.temperature is not None:
        return "temperature"
    if obj.top_p is not None:
        return "top_p"
    return "default"


class ConversationSettingsForm(forms.Form):
    """A conversation's model, system prompt and sampling settings.

    Field types and ranges are checked here; the service checks the rest (the
    model's output limit, temperature with top_p, whether the model is offered).
    Anthropic models refuse temperature together with top_p, so `sampling`
    makes it a choice; without it (a script posting both), the service refuses.
    """

    model = forms.ChoiceField(choices=model_choices)
    system_prompt = StorableTextField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), max_length=20_000
    )
    sampling = forms.ChoiceField(choices=SAMPLING_CHOICES, required=False)
    temperature = forms.FloatField(required=False, min_value=0, max_value=1)
    top_p = forms.FloatField(required=False, min_value=0, max_value=1)
    top_k = forms.IntegerField(required=False, min_value=1)
    max_tokens = forms.IntegerField(min_value=1)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        sampling = data.pop("sampling", "") or ""
        if sampling == "temperature":
            data["top_p"] = None
            if data.get("temperature") is None and "temperature" not in self.errors:
                self.add_error("temperature", "Enter a temperature from 0 to 1.")
        elif sampling == "top_p":
            data["temperature"] = None
            if data.get("top_p") is None and "top_p" not in self.errors:
                self.add_error("top_p", "Enter a top_p from 0 to 1.")
        elif sampling == "default":
            data["temperature"] = data["top_p"] = None
        return data


class ConversationCreateForm(ConversationSettingsForm):
    title = StorableTextField(required=False, max_length=200)
    # The first message: with it, the conversation is stored and its reply begins.
    message = StorableTextField(required=False, strip=False)
    model = forms.ChoiceField(choices=model_choices, required=False)
    max_tokens = forms.IntegerField(min_value=1, required=False)


# The forms below check the input rule (and a rating's choice); the services say
# what else a title, a preset name or a comment must be (not empty, how long).


class ConversationRenameForm(forms.Form):
    title = StorableTextField(required=False, strip=False)


class PresetCreateForm(forms.Form):
    name = StorableTextField(required=False, strip=False)
    for_team = forms.BooleanField(required=False)


class FeedbackForm(forms.Form):
    rating = forms.TypedChoiceField(
        choices=[("1", "Good reply"), ("-1", "Bad reply")],
        coerce=int,
        error_messages={
            "required": "Rate a reply up or down.",
            "invalid_choice": "Rate a reply up or down.",
        },
    )
    comment = StorableTextField(required=False, strip=False)


class ConversationSearchForm(forms.Form):
    """The list page's search; a longer query is cut, not refused."""

    MAX_LENGTH = 200

    q = StorableTextField(required=False)

    def clean_q(self) -> str:
        return str(self.cleaned_data["q"])[: self.MAX_LENGTH]


def form_error(form: forms.Form) -> str:
    """A bound form's error messages as one line; empty when the input is valid."""
    if form.is_valid():
        return ""
    return " ".join(str(message) for messages in form.errors.values() for message in messages)


def form_submit(form: forms.Form, service: Callable[[dict[str, Any]], Any]) -> tuple[Any, str]:
    """Check `form`, then call `service` with its cleaned data: the service's result, or
    the form's or the service's errors as one line (nothing was stored then)."""
    error = form_error(form)
    if error:
        return None, error
    try:
        return service(form.cleaned_data), ""
    except ValidationError as exc:
        return None, " ".join(exc.messages)
