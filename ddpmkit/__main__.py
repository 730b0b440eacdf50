"""``python -m ddpmkit`` (also what ``torchrun -m ddpmkit`` runs)."""

import sys

from ddpmkit.app.cli import main

sys.exit(main())
