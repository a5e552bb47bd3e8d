"""The budget and ledger records, and the usage report."""

import csv
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from chatsite.admin_site import ReadOnlyAdmin
from review.access import EVERYTHING, may_review, review_scope

from .models import Spend, UserBudget


class UserBudgetAdmin(admin.ModelAdmin):
    list_display = ("user", "monthly_budget_usd")
    autocomplete_fields = ["user"]
    search_fields = ("user__username",)


class SpendAdmin(ReadOnlyAdmin):
    """The ledger: read-only, so spend cannot be edited away."""

    list_display = ("created_at", "user", "team", "kind", "model", "input_tokens",
                    "output_tokens", "cost_usd", "estimated")  # fmt: skip
    list_filter = ("kind", "model", "team", "estimated")
    date_hierarchy = "created_at"


def _report_scope(user: Any) -> QuerySet[Spend]:
    scope = review_scope(user)
    if scope is None:
        return Spend.objects.none()
    if scope == EVERYTHING:
        return Spend.objects.all()
    return Spend.objects.filter(team_id=scope)


def _parse_day(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


def usage_report(request: HttpRequest) -> HttpResponse:
    """Cost and tokens per user, team, model and day, with totals and a chart."""
    if not may_review(request.user):
        return redirect("admin:index")
    today = timezone.now().date()
    start = _parse_day(request.GET.get("start"), today.replace(day=1))
    end = _parse_day(request.GET.get("end"), today)
    spends = _report_scope(request.user).filter(
        created_at__date__gte=start, created_at__date__lte=end
    )
    sums = {"cost": Sum("cost_usd"), "input": Sum("input_tokens"), "output": Sum("output_tokens"),
            "replies": Count("id")}  # fmt: skip
    rows = list(
        spends.annotate(day=TruncDate("created_at"))
        .values("day", "user__username", "team__name", "model")
        .annotate(**sums)
        .order_by("day", "user__username", "model")
    )
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="usage-{start}-{end}.csv"'
        writer = csv.writer(response)
        writer.writerow(["day", "user", "team", "model", "replies", "input_tokens",
                         "output_tokens", "cost_usd"])  # fmt: skip
        for row in rows:
            writer.writerow([row["day"], row["user__username"], row["team__name"] or "",
                             row["model"], row["replies"], row["input"], row["output"],
                             row["cost"]])  # fmt: skip
        return response
    totals = spends.aggregate(**sums)
    by = {
        "user": spends.values(name=Coalesce("user__username", Value("?"))),
        "team": spends.values(name=Coalesce("team__name", Value("(no team)"))),
        "model": spends.values(name=Coalesce("model", Value("?"))),
    }
    breakdowns = {key: list(qs.annotate(**sums).order_by("-cost")) for key, qs in by.items()}
    per_day = {r["day"]: r["cost"] for r in spends.annotate(day=TruncDate("created_at"))
               .values("day").annotate(cost=Sum("cost_usd"))}  # fmt: skip
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)][:92]
    peak = max([per_day.get(day) or Decimal(0) for day in days] + [Decimal("0.0001")])
    width = 640 / max(1, len(days))
    bars = [
        {
            "x": round(n * width + 1, 1),
            "width": round(max(1.0, width - 2), 1),
            "height": round(float((per_day.get(day) or 0) / peak) * 180, 1),
            "y": round(200 - float((per_day.get(day) or 0) / peak) * 180, 1),
            "day": day,
            "cost": per_day.get(day) or Decimal(0),
        }
        for n, day in enumerate(days)
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Usage and cost",
        "start": start,
        "end": end,
        "rows": rows,
        "totals": totals,
        "breakdowns": breakdowns,
        "bars": bars,
        "peak": peak,
        "csv_url": f"{reverse('admin:usage-report')}?start={start}&end={end}&format=csv",
    }
    return TemplateResponse(request, "admin/usage_report.html", context)


admin.site.register(UserBudget, UserBudgetAdmin)
admin.site.register(Spend, SpendAdmin)
