"""Everything that happens before and around a job, torch-free: Hydra resolvers, run and sweep folders
(resume included), the sweep-end report callback."""
