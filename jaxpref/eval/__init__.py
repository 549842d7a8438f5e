"""Evaluation: the gold-reward synthetic task (:mod:`.synthetic`), metrics (:mod:`.metrics`) and the
seeds x flip-rates experiment runner (:mod:`.experiment`)."""
