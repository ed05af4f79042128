"""``python -m dvmsr_mma`` is the ``basicsr`` command (also what ``torchrun -m dvmsr_mma`` runs)."""
import sys

from dvmsr_mma.cli import main

sys.exit(main())
