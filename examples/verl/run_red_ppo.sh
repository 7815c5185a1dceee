#!/usr/bin/env bash
# RED token rewards in verl 0.9.1's PPO (GAE) on one GPU; see red_ppo.yaml for every setting and README
# "Scaling out on verl" for the install. NOT RUN on a GPU by this project yet.
#
#   examples/verl/run_red_ppo.sh                                   # toy prompts, 20 steps
#   PROMPTS=my_prompts.jsonl examples/verl/run_red_ppo.sh trainer.total_training_steps=200
#
# Needs: `make verl` (or the pip lines in the README) plus vLLM for generation (`pip install vllm`, a version that
# verl 0.9.1 supports), one CUDA GPU, and the two models from the Hugging Face hub (or local copies: set POLICY, RM).
set -euo pipefail
cd "$(dirname "$0")/../.."
PROMPTS=${PROMPTS:-toy}
DATA=${DATA:-$HOME/data/red_verl}
POLICY=${POLICY:-Qwen/Qwen2.5-0.5B-Instruct}
RM=${RM:-Skywork/Skywork-Reward-V2-Qwen3-0.6B}
PYTHON=${PYTHON:-python3}
RECIPE=${RECIPE:-red_ppo}   # run_red_grpo.sh sets red_grpo

"$PYTHON" examples/verl/prepare_prompts.py --prompts "$PROMPTS" --out "$DATA"
exec "$PYTHON" -m verl.trainer.main_ppo --config-path="$PWD/examples/verl" --config-name="$RECIPE" \
  data.train_files="$DATA/train.parquet" data.val_files="$DATA/val.parquet" \
  actor_rollout_ref.model.path="$POLICY" critic.model.path="$POLICY" \
  reward.reward_model.model_path="$RM" reward.reward_kwargs.model="$RM" \
  "$@"
