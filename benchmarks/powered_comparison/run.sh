#!/usr/bin/env bash
# The powered comparison (documentation/comparison.md): 20 CT + 20 MR generated hearts (24^3), 5 folds x 2 seeds,
# every arm with the schedule and network of nnUNetTrainerPowered.py, two trainings at a time on the CPU. Resumable:
# run it again to continue. Everything goes under ROOT (its own nnU-Net folders).
#   benchmarks/powered_comparison/run.sh [ROOT]            ARMS="cin joint" benchmarks/powered_comparison/run.sh
#   VARIANT=thorax DATASET=996 ARMS=nnunet NORMALIZATIONS="CT=CT CT=zscore CT=CTClipZScore" .../run.sh ROOT
# VARIANT: the generator's variant (basic, realistic, thorax); NORMALIZATIONS: one conditional arm per
# MODALITY=SCHEME (nnunet-cin compare --normalization), each on our plans made with that normalization.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(mkdir -p "${1:-powered_comparison}" && cd "${1:-powered_comparison}" && pwd)
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed nnUNet_results=$ROOT/nnUNet_results
export nnUNet_extTrainer=$HERE  # first: compare appends ours
export nnUNet_n_proc_DA=0 nnUNet_def_n_proc=1  # two trainings at a time on 2 cores: no workers
eval "$(nnunet-cin env --cpu)"  # nnUNet_compile=false, OMP_WAIT_POLICY=PASSIVE
ARMS=${ARMS:-single finetune nnunet joint joint_alternate joint_zscore cin cin_zscore cin_alternate cin_all_norms}
NORM_ARGS=()
for n in ${NORMALIZATIONS:-}; do NORM_ARGS+=(--normalization "$n"); done
# shellcheck disable=SC2086
nnunet-cin compare -d "${DATASET:-995}" --synthetic 20 --shape 24 24 24 --synthetic-variant "${VARIANT:-basic}" \
    -f ${FOLDS:-0 1 2 3 4} --seeds ${SEEDS:-0 1} --trainer-template '{trainer}Powered' --arms $ARMS \
    "${NORM_ARGS[@]}" -j "${JOBS:-2}" -np 2 -device cpu ${EXTRA:-}
