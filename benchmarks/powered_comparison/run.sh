#!/usr/bin/env bash
# The powered comparison (documentation/comparison.md, "The powered run"): 20 CT + 20 MR generated hearts (24^3,
# basic variant), 5 folds x 2 seeds, every arm with the schedule and network of nnUNetTrainerPowered.py, two trainings at a
# time on the CPU. Resumable: run it again to continue. Everything goes under ROOT (its own nnU-Net folders).
#   benchmarks/powered_comparison/run.sh [ROOT]            ARMS="cin joint" benchmarks/powered_comparison/run.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(mkdir -p "${1:-powered_comparison}" && cd "${1:-powered_comparison}" && pwd)
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed nnUNet_results=$ROOT/nnUNet_results
export nnUNet_extTrainer=$HERE  # first: compare appends ours
export nnUNet_n_proc_DA=0 nnUNet_def_n_proc=1  # two trainings at a time on 2 cores: no workers
eval "$(nnunet-cin env --cpu)"  # nnUNet_compile=false, OMP_WAIT_POLICY=PASSIVE
ARMS=${ARMS:-single finetune nnunet joint joint_alternate joint_zscore cin cin_zscore cin_alternate cin_all_norms}
# shellcheck disable=SC2086
nnunet-cin compare -d 995 --synthetic 20 --shape 24 24 24 -f ${FOLDS:-0 1 2 3 4} \
    --seeds ${SEEDS:-0 1} --trainer-template '{trainer}Powered' --arms $ARMS -j 2 -np 2 -device cpu
