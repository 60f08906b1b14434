"""`python -m nnunet_cin.experiments.compare ...` = `nnunet-cin compare ...`."""
import sys

from nnunet_cin.experiments.compare.cli import main

sys.exit(main())
