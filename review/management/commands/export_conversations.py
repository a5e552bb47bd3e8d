"""Export conversations as JSON Lines: `manage.py export_conversations --since 2026-11-01`."""

import sys
from datetime import UTC, date, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from conversations.models import Conversation
from review.exports import conversations_as_jsonl


class Command(BaseCommand):
    help = "Write conversations updated since a day as JSON Lines (one conversation a line)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--since", required=True, help="YYYY-MM-DD (UTC)")
        parser.add_argument("--format", default="jsonl", choices=["jsonl"])
        parser.add_argument("--output", help="a file; standard output when left out")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = date.fromisoformat(options["since"])
        except ValueError as exc:
            raise CommandError("--since takes a day as YYYY-MM-DD") from exc
        start = datetime.combine(since, time.min, tzinfo=UTC)
        conversations = (
            Conversation.objects.filter(updated_at__gte=start)
            .select_related("owner")
            .order_by("updated_at")
        )
        output = open(options["output"], "w", encoding="utf-8") if options["output"] else sys.stdout
        count = 0
        try:
            for line in conversations_as_jsonl(conversations.iterator()):
                output.write(line)
                count += 1
        finally:
            if output is not sys.stdout:
                output.close()
        self.stderr.write(f"{count} conversations exported")
