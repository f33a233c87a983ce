from django.apps import AppConfig


class GreetingsConfig(AppConfig):
    name = "sample_apps.django_project.greetings"
    label = "greetings"
