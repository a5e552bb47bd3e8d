from django import forms
from django.conf import settings


def model_choices() -> list[tuple[str, str]]:
    return [(model_id, str(spec["label"])) for model_id, spec in settings.CHAT_MODELS.items()]


class ConversationSettingsForm(forms.Form):
    """A conversation's model, system prompt and sampling settings.

    Field types and ranges are checked here; the service checks the rest (the
    model's output limit, temperature with top_p, whether the model is offered).
    """

    model = forms.ChoiceField(choices=model_choices)
    system_prompt = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), max_length=20_000
    )
    temperature = forms.FloatField(
        required=False, min_value=0, max_value=1, widget=forms.NumberInput(attrs={"step": "0.05"})
    )
    top_p = forms.FloatField(
        required=False, min_value=0, max_value=1, widget=forms.NumberInput(attrs={"step": "0.05"})
    )
    top_k = forms.IntegerField(required=False, min_value=1)
    max_tokens = forms.IntegerField(min_value=1)


class ConversationCreateForm(ConversationSettingsForm):
    title = forms.CharField(required=False, max_length=200)
    model = forms.ChoiceField(choices=model_choices, required=False)
    max_tokens = forms.IntegerField(min_value=1, required=False)
