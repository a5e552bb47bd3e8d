from typing import Any

from django import forms
from django.conf import settings

SAMPLING_CHOICES = [
    ("default", "Model default"),
    ("temperature", "Temperature"),
    ("top_p", "top_p"),
]


def model_choices() -> list[tuple[str, str]]:
    return [(model_id, str(spec["label"])) for model_id, spec in settings.CHAT_MODELS.items()]


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
    system_prompt = forms.CharField(
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
    title = forms.CharField(required=False, max_length=200)
    model = forms.ChoiceField(choices=model_choices, required=False)
    max_tokens = forms.IntegerField(min_value=1, required=False)
