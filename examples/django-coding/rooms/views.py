"""Seed 003 kept rooms alive by hand and ran `manage.py cleanup_sessions` from cron to mark
rooms idle for 7 days inactive. With lapse: rooms are lapse sessions of kind `coding` (its
rule in lapse.toml ends them after 7 days without activity), the app forwards heartbeats, and
a webhook tells it when a room ended. The cron job is gone (`lapse serve` applies rules as
they come due; without a server, `lapse sweep` from cron does the same)."""

import json
import uuid

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from lapse_client import Lapse, LapseError, WebhookVerificationError, verify_webhook

from .models import CodingRoom


def lapse_for(user: str) -> Lapse:
    """A client acting for the signed-in user (here: the `X-User` header)."""
    return Lapse(settings.LAPSE_URL, api_key=settings.LAPSE_SERVICE_KEY, actor=user)


def problem(e: LapseError) -> JsonResponse:
    return JsonResponse({"code": e.code, "detail": e.detail}, status=e.status)


@csrf_exempt
@require_POST
def create_room(request: HttpRequest) -> JsonResponse:
    user = request.headers["X-User"]
    title = json.loads(request.body or b"{}").get("title", "")
    room_id = f"room-{uuid.uuid4()}"
    with lapse_for(user) as lapse:
        try:
            lapse.create_session("coding", id=room_id, title=title)
        except LapseError as e:
            return problem(e)
    CodingRoom.objects.create(id=room_id, title=title, owner=user)
    return JsonResponse({"id": room_id}, status=201)


@csrf_exempt
@require_POST
def heartbeat(request: HttpRequest, room_id: str) -> HttpResponse:
    user = request.headers["X-User"]
    with lapse_for(user) as lapse:
        try:
            lapse.heartbeat(room_id, user)
        except LapseError as e:
            return problem(e)
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def lapse_webhook(request: HttpRequest) -> HttpResponse:
    try:
        event = verify_webhook(request.headers, request.body, settings.LAPSE_WEBHOOK_SECRET)
    except WebhookVerificationError:
        return HttpResponse(status=400)
    if event.type in ("session.expired", "session.completed", "session.cancelled"):
        # Retries carry the same event: marking inactive twice changes nothing.
        CodingRoom.objects.filter(id=event.session_id).update(
            is_active=False, ended_reason=event.data.get("session", {}).get("end_reason") or event.type
        )
    return HttpResponse(status=204)
