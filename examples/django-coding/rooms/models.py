from django.db import models


class CodingRoom(models.Model):
    """The app's own record of a room. lapse decides when it ends; a webhook tells us."""

    id = models.CharField(primary_key=True, max_length=128)
    title = models.CharField(max_length=200, blank=True)
    owner = models.CharField(max_length=128)
    is_active = models.BooleanField(default=True)
    ended_reason = models.CharField(max_length=64, blank=True)

    class Meta:
        app_label = "rooms"
