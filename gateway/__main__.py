"""``python -m gateway`` is the ``cti-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
