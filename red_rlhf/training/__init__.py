"""Training: rollouts (`rollout`), the PPO/RLOO update (`ppo`), the phase loop (`trainer`), checkpoints
(`checkpoint`), Bradley-Terry reward-model training (`reward_model`). Accelerate is used here and in the CLI only."""
