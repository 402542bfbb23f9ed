"""The recommenders and their measurement: baseline rankers, the PPO slate policy and its training, the evaluation
engine and report, export and serving (DESIGN_NOTES.md has the module map)."""
