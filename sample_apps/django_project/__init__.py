"""A minimal Django project: ``mysite`` (settings, urls, wsgi) and the ``greetings`` app."""
