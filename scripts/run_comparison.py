#!/usr/bin/env python
"""The paper's comparison (single-modality, fine-tuning, plain nnU-Net, joint, conditional) on one dataset with
nnU-Net's commands.

Same as `nnunet-cin compare` (nnunet_cin/experiments/compare/); `python scripts/run_comparison.py -h`. Example:

    python scripts/run_comparison.py -d 999 -f 0 1 --schedule _5epochs --synthetic 8 --seeds 0 1
"""
import sys

from nnunet_cin.experiments.compare import main

if __name__ == "__main__":
    sys.exit(main())
