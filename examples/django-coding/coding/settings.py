"""Seed 003's coding-rooms app, cut down to what talks to lapse."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only")
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "rooms"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "coding.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CODING_DB", str(BASE_DIR / "coding.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# Where lapse is, the key this app uses, and the secret its webhooks are signed with.
LAPSE_URL = os.environ.get("LAPSE_URL", "http://127.0.0.1:8080")
LAPSE_SERVICE_KEY = os.environ.get("LAPSE_SERVICE_KEY", "")
LAPSE_WEBHOOK_SECRET = os.environ.get("LAPSE_WEBHOOK_SECRET", "")
