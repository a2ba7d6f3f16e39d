"""``python -m notifelect``: see ``python -m notifelect --help``."""

import sys

from .cli import main

sys.exit(main(prog="python -m notifelect"))
