"""Library notices a sweeplab user cannot act on, dropped at the loggers that emit them.

Each filter matches one message; everything else those loggers say, real warnings included,
still reaches the console.
"""

from __future__ import annotations

import logging
import re

# diffusers says this for every part of a pipeline a LoRA file does not touch (the text encoder of a UNet-only LoRA);
# sweeplab counts the layers a LoRA file loaded into and fails in one line when they are not all of its layers.
NO_LORA_KEYS = re.compile(r"No LoRA keys associated to \w+ found with the prefix=")
NOTICES = {
    # diffusers' `ModelMixin.to(dtype)` says this on every cast, also when no module needs float32
    "diffusers.models.modeling_utils": re.compile(r"There are modules in \w+ that should be kept in float32: \[\]\."),
    # transformers without torchvision serves image processors from PIL; img2img never uses them
    "transformers.utils.import_utils": re.compile(
        r"`\w+` requires torchvision \(not installed\); falling back to `\w+Pil`"
    ),
    "diffusers.loaders.lora_base": NO_LORA_KEYS,  # text encoders
    "diffusers.loaders.peft": NO_LORA_KEYS,  # the denoiser
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
