"""Students cut from the teacher: structured pruning and vocabulary trimming.

`core` ranks and slices (width/depth, Minitron), `vocab` trims the vocabulary and its
tokenizer, `__main__` is `python -m distill.prune`, `pipeline_init` is the pipeline's
`--config.student.init=prune`.
"""
from distill.methods.prune.core import (METHODS, Importance, Plan, apply_plan, importance,
                                instrumented_forward, plan, prune, target_config)

__all__ = ["METHODS", "Importance", "Plan", "apply_plan", "importance", "instrumented_forward",
           "plan", "prune", "target_config"]
