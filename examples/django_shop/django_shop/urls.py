"""The shop's two URLs: place an order, read one."""

from django.urls import path
from orders import views

urlpatterns = [
    path("orders/", views.place, name="place-order"),
    path("orders/<int:order_id>/", views.detail, name="order-detail"),
]
