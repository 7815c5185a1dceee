#!/usr/bin/env bash
# RED token rewards under verl 0.9.1's critic-free group estimator red_grpo on one GPU; see red_grpo.yaml for every
# setting and README "RED under GRPO / RLOO in verl". NOT RUN on a GPU by this project yet.
#
#   examples/verl/run_red_grpo.sh                                              # toy prompts, 20 steps
#   examples/verl/run_red_grpo.sh algorithm.adv_estimator=red_rloo             # leave-one-out baseline instead
#   examples/verl/run_red_grpo.sh reward.reward_kwargs.scheme=sparse           # the same run on the sparse reward
#
# Needs what run_red_ppo.sh needs (`make verl`, vLLM, one CUDA GPU, the two models or local copies: POLICY, RM).
set -euo pipefail
cd "$(dirname "$0")/../.."
PROMPTS=${PROMPTS:-toy}
DATA=${DATA:-$HOME/data/red_verl}
POLICY=${POLICY:-Qwen/Qwen2.5-0.5B-Instruct}
RM=${RM:-Skywork/Skywork-Reward-V2-Qwen3-0.6B}
PYTHON=${PYTHON:-python3}

"$PYTHON" examples/verl/prepare_prompts.py --prompts "$PROMPTS" --out "$DATA"
exec "$PYTHON" -m verl.trainer.main_ppo --config-path="$PWD/examples/verl" --config-name=red_grpo \
  data.train_files="$DATA/train.parquet" data.val_files="$DATA/val.parquet" \
  actor_rollout_ref.model.path="$POLICY" \
  reward.reward_model.model_path="$RM" reward.reward_kwargs.model="$RM" \
  "$@"
