"""The project's URLs: everything belongs to the ``greetings`` app."""

from django.urls import include, path

urlpatterns = [
    path("", include("sample_apps.django_project.greetings.urls")),
]
