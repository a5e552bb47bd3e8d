"""Create a first admin account when there is none, and print its password once."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the first admin account (printed once) when no superuser exists."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write("Sign in with your existing admin account (or any user you created).")
            return
        username = str(options["username"])
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        line = "=" * 64
        address = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
        self.stdout.write(
            f"{line}\nFirst admin account created. Sign in at {address}/accounts/login/\n"
            f"  username: {username}\n  password: {password}\n"
            f"This password is shown only once; change it under /admin/.\n{line}"
        )
