"""The networks and what trains them: timm backbone, grading heads, the grader module, metrics, optimiser
and learning-rate schedule."""
