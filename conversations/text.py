"""The one rule for text a person submits, over HTTP or the socket.

PostgreSQL refuses NUL in text columns and no database can store a lone UTF-16
surrogate (JSON's "\\ud800" escapes produce them); both are refused up front,
with a field error, so nothing half-stored ever follows.
"""

import re
from typing import Any

from django.core.exceptions import ValidationError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

UNSTORABLE_MESSAGE = "Remove the NUL or unpaired surrogate characters from this text."


def text_is_storable(value: str) -> bool:
    return _UNSTORABLE.search(value) is None


def validate_storable_text(value: Any) -> None:
    """A validator for form fields and services: no NUL, no lone surrogates."""
    if isinstance(value, str) and not text_is_storable(value):
        raise ValidationError(UNSTORABLE_MESSAGE, code="unstorable")
