"""Library notices a sweeplab user cannot act on, dropped at the loggers that emit them.

Each filter matches one message; everything else those loggers say, real warnings included,
still reaches the console.
"""

from __future__ import annotations

import logging
import re

NOTICES = {
    # diffusers' `ModelMixin.to(dtype)` says this on every cast, also when no module needs float32
    "diffusers.models.modeling_utils": re.compile(r"There are modules in \w+ that should be kept in float32: \[\]\."),
    # transformers without torchvision serves image processors from PIL; img2img never uses them
    "transformers.utils.import_utils": re.compile(
        r"`\w+` requires torchvision \(not installed\); falling back to `\w+Pil`"
    ),
}


class NoticeFilter(logging.Filter):
    """Drops the records of one logger whose message starts with a pattern."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_library_notices() -> None:
    """Install the filters once per process (idempotent: loading a model calls it again)."""
    for name, pattern in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, NoticeFilter) for existing in logger.filters):
            logger.addFilter(NoticeFilter(pattern))
