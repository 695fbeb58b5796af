"""Which expert to use for a task: MODEL2VEC, leave-one-out evaluation and LogME."""
