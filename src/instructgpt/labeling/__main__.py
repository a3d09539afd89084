"""``python -m instructgpt.labeling ARGS`` = ``instructgpt label ARGS``."""

import sys

from .cli import main

sys.exit(main())
