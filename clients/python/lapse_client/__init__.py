"""lapse-client: sessions, presence, events and webhooks of a lapse server, from Python.

    from lapse_client import Lapse

    lapse = Lapse("http://localhost:8080", api_key=os.environ["LAPSE_SERVICE_KEY"])
    room = lapse.create_session("coding", host="ana")
    lapse.join(room.id, "ben")
    for event in lapse.stream_events(session=room.id):
        print(event.type)
"""

from .client import AsyncLapse, Lapse
from .errors import LapseError
from .models import Event, EventPage, NextDue, Participant, Session, SessionPage
from .webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "AsyncLapse",
    "Event",
    "EventPage",
    "Lapse",
    "LapseError",
    "NextDue",
    "Participant",
    "Session",
    "SessionPage",
    "WebhookVerificationError",
    "verify_webhook",
]
