"""The WSGI entry point: ``sample_apps.django_project.mysite.wsgi:application``.

Serve it from the repository root with one of::

    python -m wsgi_zmq sample_apps.django_project.mysite.wsgi:application
    python -m wsgi_zmq.handler sample_apps.django_project.mysite.wsgi:application
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_apps.django_project.mysite.settings")

application = get_wsgi_application()
