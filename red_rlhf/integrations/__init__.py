"""Adapters that bring red_rlhf's token rewards into other training engines.

Each engine's module imports that engine: import only the one you use (`red_rlhf.integrations.verl` needs the
`verl` extra, see README "Scaling out on verl"). Nothing in red_rlhf imports this package.
"""
