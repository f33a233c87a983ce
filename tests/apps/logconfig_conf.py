"""A config file whose ``logconfig_dict`` gives ``wsgi_zmq.error`` its own line format."""

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "custom": {"format": "CUSTOM|%(process)d|%(levelname)s|%(name)s|%(message)s"},
    },
    "handlers": {
        "custom": {"class": "logging.StreamHandler", "formatter": "custom",
                   "stream": "ext://sys.stderr"},
    },
    "loggers": {
        "wsgi_zmq.error": {"handlers": ["custom"], "level": "INFO", "propagate": False},
    },
}
