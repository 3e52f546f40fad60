"""``python -m hybridreduce`` is the ``hybridreduce`` command."""

import sys

from .cli import main

sys.exit(main())
