"""Prompts and preference data: prompt files and their order (`prompts`), JSON lines (`jsonl`), the human
sentiment ratings behind the demo (`sentiment`) and the toy task (`toy`)."""
