"""The echo router wrapped in wsgiref.validate.validator: any PEP 3333 violation by the
server (or the app) raises AssertionError inside the worker, which answers 500."""

from wsgiref.validate import validator

from apps.echo import router

application = validator(router)
