"""``python -m datasets_prep STEP ...``"""
import sys

from datasets_prep.cli import main

sys.exit(main())
