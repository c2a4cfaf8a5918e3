"""What runs inside a job around Lightning: callbacks, rank-0 hand-offs between DDP ranks."""
