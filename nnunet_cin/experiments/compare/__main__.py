"""`python -m nnunet_cin.experiments.compare ...` = `nnunet-cin compare ...`."""
import sys

from nnunet_cin.experiments.compare import main

sys.exit(main())
