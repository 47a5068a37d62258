"""``python -m resnet_tune`` (also what ``torchrun -m resnet_tune train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
