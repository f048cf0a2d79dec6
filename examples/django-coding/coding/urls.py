from django.urls import path

from rooms import views

urlpatterns = [
    path("rooms", views.create_room),
    path("rooms/<str:room_id>/heartbeat", views.heartbeat),
    path("hooks/lapse", views.lapse_webhook),
]
