"""The only place that adds log handlers. Keeps patient data out of the log."""

from __future__ import annotations

import logging
import re
import sys

from pynetdicom import _config as pynetdicom_config


def quiet_pynetdicom() -> None:
    """pynetdicom logs C-FIND identifiers (patient names) at INFO by default
    (association.py); switch that off and cap its logger at WARNING."""
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


#: pydicom's validation messages that quote the value they judge (pydicom.valuerep): a birth
#: date, an age or a time a RIS wrote the old way is patient data
_REPR = r"""(?:b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*"|.*?(?=\.(?:\s|$)))"""
_QUOTED_VALUE = re.compile(
    rf"(?P<head>Invalid value for VR [A-Z]{{2}}: ){_REPR}"
    rf"|(?P<head2>Value ){_REPR}(?= is not valid for elements with a VR of)",
    re.DOTALL)


class WithholdDicomValues(logging.Filter):
    """Rewrites pydicom's warnings about an invalid value (and Python warnings carrying them,
    see captureWarnings below) so that they name the problem but not the value."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Invalid value for VR" not in message and "is not valid for elements" not in message:
            return True
        redacted = _QUOTED_VALUE.sub(_withhold, message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _withhold(match: re.Match[str]) -> str:
    return f"{match.group('head') or match.group('head2')}(value withheld)"


def setup_logging(level: str = "INFO") -> None:
    quiet_pynetdicom()
    # pydicom warns through its logger and through warnings.warn, which Python would print to
    # stderr as it is: both go through our handler and its filter
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    handler.addFilter(WithholdDicomValues())
    root.addHandler(handler)
    root.setLevel(level)
