"""What people take from a conversation for review: its exports, and ratings of replies."""

import uuid

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from conversations.forms import FeedbackForm, form_submit
from conversations.selectors import conversation_get_for, turn_get_for

from .access import review_record, reviewable_by
from .exports import conversation_as_dict, conversation_as_markdown
from .feedback import feedback_give

# The export formats and the file extension each is served with.
EXPORT_EXTENSIONS = {"json": "json", "md": "md"}


@login_required
@require_GET
def conversation_export(request: HttpRequest, conversation_id: uuid.UUID, fmt: str) -> HttpResponse:
    """The owner's, or a reviewer's (recorded), copy as JSON or Markdown."""
    extension = EXPORT_EXTENSIONS.get(fmt)
    if extension is None:
        raise Http404("No such export format.")
    conversation = conversation_get_for(user=request.user, conversation_id=conversation_id)
    if conversation is None:
        conversation = reviewable_by(request.user).filter(pk=conversation_id).first()
        if conversation is None:
            raise Http404("No such conversation.")
        review_record(reviewer=request.user, conversation=conversation, reason=f"export {fmt}")
    if fmt == "json":
        response: HttpResponse = JsonResponse(
            conversation_as_dict(conversation), json_dumps_params={"ensure_ascii": False}
        )
    else:
        response = HttpResponse(
            conversation_as_markdown(conversation), content_type="text/markdown; charset=utf-8"
        )
    # Only the UUID and a known extension: nothing from the request reaches the header.
    response["Content-Disposition"] = (
        f'attachment; filename="conversation-{conversation.pk}.{extension}"'
    )
    return response


@login_required
@require_POST
def turn_feedback(request: HttpRequest, turn_id: int) -> HttpResponse:
    """The owner rates a reply up or down, with an optional comment."""
    turn = turn_get_for(user=request.user, turn_id=turn_id)
    if turn is None:
        raise Http404("No such reply.")
    _, error = form_submit(
        FeedbackForm(request.POST),
        lambda data: feedback_give(
            user=request.user, turn=turn, rating=data["rating"], comment=data["comment"]
        ),
    )
    return render(
        request,
        "conversations/partials/feedback.html",
        {"turn": turn, "error": error, "given": not error},
        status=400 if error else 200,
    )
