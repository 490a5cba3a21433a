"""``python -m orthoguard`` (and ``accelerate launch -m orthoguard``) run the command line."""

import sys

from orthoguard.cli import main

sys.exit(main())
