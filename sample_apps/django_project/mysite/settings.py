"""Settings of the sample Django project: no database, sessions in signed cookies.

Serve it from the repository root with::

    python -m wsgi_zmq sample_apps.django_project.mysite.wsgi:application
"""

# For this sample only: a real project reads its key from the environment or a secret store.
SECRET_KEY = "django-insecure-wsgi-zmq-sample-only-do-not-use-this-key-anywhere-else"

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "sample_apps.django_project.greetings",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sample_apps.django_project.mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
            ],
        },
    },
]

# No database: sessions live in a cookie signed with SECRET_KEY, so the session survives
# whichever handler worker (or handler host) serves the next request.
DATABASES = {}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

# Django sets the process's TZ to TIME_ZONE (America/Chicago by default), which would also
# change the local time in the handler's log lines.
TIME_ZONE = "UTC"
USE_TZ = True

# With DEBUG = False Django would only mail errors to ADMINS; print them on stderr instead,
# where the handler's log collects them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["console"], "level": "WARNING"}},
}
