"""Hugging Face models and tokenizers: prefix scores from reward models (`prefix`), reward sources that give
tensors on the policy's tokens (`sources`), texts in and token rewards out (`scorer`), building the policy,
reference and critic (`build`), tiny models for tests (`tiny`) and the packaged SmolLM2 (`packaged`)."""
