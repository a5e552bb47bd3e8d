"""The admin review: conversations (scoped, read-only, every look recorded), the feedback
inbox and the record of looks.

What people wrote (titles, messages, feedback comments) appears only on a page that records
the look; lists show metadata and are searched and filtered by metadata only."""

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.db.models import Count, DecimalField, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from billing.models import Spend
from chatsite.admin_site import ReadOnlyAdmin
from conversations.models import Conversation, Turn
from conversations.selectors import turns_in_tree_order
from conversations.templatetags.chat import model_label
from conversations.templatetags.icons import icon

from .access import may_review, review_record, reviewable_by
from .exports import conversations_as_jsonl
from .models import Feedback, ReviewAccess


class ReviewPermissions:
    """Reviewers may look (never add, change transcripts or delete) within their scope."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_review(request.user)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MetadataLookupsOnly:
    """A list's address may not filter on what people wrote: that is a search by content
    (`?title__icontains=…`), answered by the row count without any record."""

    content_fields: tuple[str, ...] = ()

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        if lookup.split(LOOKUP_SEP)[0] in self.content_fields:
            return False
        return super().lookup_allowed(lookup, value, request)  # type: ignore[misc]


def transcript_label(conversation: Conversation) -> str:
    """How lists name a conversation: never by its title, which is content."""
    return f"Transcript {conversation.pk.hex[:8]}"


class FlaggedFilter(admin.SimpleListFilter):
    title = "flagged"
    parameter_name = "flagged"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Flagged"), ("no", "Not flagged")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.exclude(flag="")
        if self.value() == "no":
            return queryset.filter(flag="")
        return queryset


class HasErrorsFilter(admin.SimpleListFilter):
    title = "has errors"
    parameter_name = "errors"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "With failed replies")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            failed = Turn.objects.filter(conversation=OuterRef("pk"), state__in=Turn.FAILED_STATES)
            return queryset.filter(Q(pk__in=failed.values("conversation")))
        return queryset


class ReplyStateFilter(admin.SimpleListFilter):
    title = "reply state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state.value, state.label) for state in Turn.State]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(
                pk__in=Turn.objects.filter(state=self.value()).values("conversation")
            )
        return queryset


def _cost_subquery() -> Subquery:
    return Subquery(
        Spend.objects.filter(turn__conversation=OuterRef("pk"))
        .values("turn__conversation")
        .annotate(total=Sum("cost_usd"))
        .values("total"),
        output_field=DecimalField(max_digits=12, decimal_places=6),
    )


def _annotation(name: str, description: str) -> Any:
    """A list column showing the count `get_queryset` annotated as `name`, sortable."""

    @admin.display(description=description, ordering=name)
    def column(model_admin: Any, obj: Any) -> int:
        return int(getattr(obj, name))

    return column


@admin.action(description="Export selected as JSON Lines")
def export_jsonl(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
    for conversation in queryset:
        review_record(reviewer=request.user, conversation=conversation, reason="export")
    response = StreamingHttpResponse(
        conversations_as_jsonl(queryset.select_related("owner")), content_type="application/jsonl"
    )
    response["Content-Disposition"] = 'attachment; filename="conversations.jsonl"'
    return response


class ConversationReviewAdmin(MetadataLookupsOnly, ReviewPermissions, admin.ModelAdmin):
    """The list is metadata; the title and messages are on the transcript, which records."""

    list_display = (
        "transcript", "owner", "team", "model_name", "turn_count", "tokens", "cost",
        "last_activity", "flag", "errors",
    )  # fmt: skip
    list_filter = (
        "model",
        ("owner__membership__team", admin.RelatedOnlyFieldListFilter),
        ReplyStateFilter,
        "updated_at",
        FlaggedFilter,
        HasErrorsFilter,
    )
    search_fields = ("owner__username",)
    search_help_text = (
        "Search by owner's username. Titles and messages are read on the transcript, "
        "where each look is recorded and shown to the owner."
    )
    content_fields = ("title", "system_prompt", "turns")
    actions = [export_jsonl]
    change_form_template = "admin/conversations/conversation/transcript.html"
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        scope = reviewable_by(request.user).values("pk")
        return (
            Conversation.objects.filter(pk__in=scope)
            .select_related("owner__membership__team")
            .annotate(
                n_turns=Count("turns", distinct=True),
                n_tokens=Coalesce(Sum("turns__input_tokens"), 0)
                + Coalesce(Sum("turns__output_tokens"), 0),
                n_errors=Count("turns", filter=Q(turns__state__in=Turn.FAILED_STATES)),
                total_cost=Coalesce(_cost_subquery(), Value(Decimal(0))),
            )
        )

    @admin.display(description="conversation")
    def transcript(self, obj: Conversation) -> str:
        return transcript_label(obj)

    def action_checkbox(self, obj: Conversation) -> SafeString:
        # Django labels the box with str(obj), which is the title.
        label = f"Select {transcript_label(obj)} for an action"
        attrs = {"class": "action-select", "aria-label": label}
        checkbox = forms.CheckboxInput(attrs, check_test=lambda value: False)
        return checkbox.render(helpers.ACTION_CHECKBOX_NAME, str(obj.pk))

    @admin.display(description="team")
    def team(self, obj: Conversation) -> str:
        membership = getattr(obj.owner, "membership", None)
        return membership.team.name if membership else "—"

    @admin.display(description="model", ordering="model")
    def model_name(self, obj: Conversation) -> str:
        return model_label(obj.model)

    @admin.display(description="last activity", ordering="updated_at")
    def last_activity(self, obj: Conversation) -> str:
        return f"{timezone.localtime(obj.updated_at):%Y-%m-%d %H:%M}"

    turn_count = _annotation("n_turns", "turns")
    tokens = _annotation("n_tokens", "tokens")
    errors = _annotation("n_errors", "failed replies")

    @admin.display(description="cost", ordering="total_cost")
    def cost(self, obj: Any) -> str:
        return f"${obj.total_cost:.4f}"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # transcripts are read-only; flags are set through the review form

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        conversation = self.get_queryset(request).filter(pk=object_id).first()
        if conversation is None:
            raise Http404("No such conversation.")
        if request.method == "POST":
            flag = request.POST.get("flag", "")
            if flag in Conversation.Flag.values:
                Conversation.objects.filter(pk=conversation.pk).update(flag=flag)
                messages.success(request, "Flag saved.")
            return redirect(request.path)
        review_record(
            reviewer=request.user, conversation=conversation, reason=request.GET.get("reason", "")
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "conversation": conversation,
            "turns": turns_in_tree_order(conversation=conversation),  # with what each cost
            "read_only": True,
            "show_log_id": True,
            "show_tree": True,  # every version, the active path marked
            "flags": Conversation.Flag.choices,
            "accesses": conversation.review_accesses.select_related("reviewer")[:20],
            "title": f"Transcript: {conversation.display_title}",
        }
        return TemplateResponse(request, self.change_form_template, context)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Transcripts are never changed, and the page would be titled with the conversation's.
        raise Http404("Transcripts have no change history.")


class FeedbackInboxAdmin(MetadataLookupsOnly, ReviewPermissions, admin.ModelAdmin):
    """Negative and unreviewed first. The list shows ratings; a comment and the reply it is
    about are read on the feedback's own page, which records the look."""

    list_display = ("created_at", "user", "rating_label", "has_comment", "status", "flag",
                    "conversation")  # fmt: skip
    list_editable = ("status", "flag")
    list_filter = ("status", "rating", "flag")
    search_fields = ("user__username",)
    search_help_text = "Search by username. Comments are read on each feedback's own page."
    content_fields = ("comment", "reviewer_note", "turn")
    fields = ("reply", "user", "rating_label", "comment", "status", "flag", "reviewer_note")
    readonly_fields = ("reply", "user", "rating_label", "comment")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Feedback]:
        scope = reviewable_by(request.user).values("pk")
        return (
            Feedback.objects.filter(turn__conversation__in=scope)
            .select_related("turn__conversation", "user")
            .order_by("-status", "rating", "-created_at")  # open before resolved, -1 before +1
        )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_review(request.user)

    @admin.display(description="rating", ordering="rating")
    def rating_label(self, obj: Feedback) -> SafeString:
        # Drawn, not an emoji (which shows as an empty box without an emoji font).
        name = "thumb-up" if obj.rating > 0 else "thumb-down"
        return format_html("{} {}", icon(name), "up" if obj.rating > 0 else "down")

    @admin.display(description="comment", boolean=True)
    def has_comment(self, obj: Feedback) -> bool:
        return bool(obj.comment)

    @admin.display(description="conversation")
    def conversation(self, obj: Feedback) -> str:
        url = reverse("admin:conversations_conversation_change", args=[obj.turn.conversation_id])
        return format_html('<a href="{}">{}</a>', url, transcript_label(obj.turn.conversation))

    @admin.display(description="reply")
    def reply(self, obj: Feedback) -> str:
        text = obj.turn.content
        return text[:80] + ("…" if len(text) > 80 else "")

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)
        if response.status_code == 200:  # the page, with the comment and reply, was shown
            feedback = self.get_object(request, unquote(object_id))
            if feedback is not None:
                review_record(reviewer=request.user, conversation=feedback.turn.conversation,
                              reason="feedback")  # fmt: skip
        return response


class ReviewAccessAdmin(ReadOnlyAdmin):
    """The record of every look: readable by superusers, changed by no one."""

    list_display = ("opened_at", "reviewer", "transcript", "owner", "reason")
    list_filter = ("opened_at",)
    search_fields = ("reviewer__username", "reason", "conversation__owner__username")
    fields = ("opened_at", "reviewer", "transcript", "owner", "reason")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ReviewAccess]:
        return super().get_queryset(request).select_related("reviewer", "conversation__owner")

    @admin.display(description="conversation")
    def transcript(self, obj: ReviewAccess) -> str:
        return transcript_label(obj.conversation)

    @admin.display(description="owner")
    def owner(self, obj: ReviewAccess) -> str:
        return obj.conversation.owner.get_username()


admin.site.register(Conversation, ConversationReviewAdmin)
admin.site.register(Feedback, FeedbackInboxAdmin)
admin.site.register(ReviewAccess, ReviewAccessAdmin)
