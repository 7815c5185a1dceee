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
RECIPE=red_grpo exec "$(dirname "$0")/run_red_ppo.sh" "$@"
