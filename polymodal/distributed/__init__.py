"""Process-group set-up and the collectives objectives, evaluators and parallel plans share."""
