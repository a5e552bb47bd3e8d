"""Make an API token for a person; the token is the last word of the last line."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.tokens import token_create


class Command(BaseCommand):
    help = "Make a personal API token for USERNAME and print it (shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: options["username"]})
        except User.DoesNotExist as exc:
            raise CommandError(f"No user named {options['username']!r}.") from exc
        if not user.is_active:
            raise CommandError(f"{options['username']!r} is deactivated.")
        try:
            token, secret = token_create(owner=user, name=options["name"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        self.stdout.write(f"Token {token.name!r} for {user.get_username()} (shown only once):")
        self.stdout.write(secret)
