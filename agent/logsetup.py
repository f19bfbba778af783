"""The only place that adds log handlers. Keeps patient data out of the log."""

from __future__ import annotations

import logging
import sys

from pynetdicom import _config as pynetdicom_config


def quiet_pynetdicom() -> None:
    """pynetdicom logs C-FIND identifiers (patient names) at INFO by default
    (association.py); switch that off and cap its logger at WARNING."""
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def setup_logging(level: str = "INFO") -> None:
    quiet_pynetdicom()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
