"""Pure torch math, no tokenizer, model or accelerator: prefix scores -> token rewards (`redistribute`,
`reward_assembly`), KL, GAE and RLOO (`advantages`), PPO losses (`losses`), token alignment (`alignment`)."""
