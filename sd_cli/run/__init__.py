"""A run from request to files: every way of asking for images becomes a list of jobs (jobs.py),
which are batched, rendered by the pipeline of the subcommand and written as they finish
(render.py); under torchrun each process renders its share (distributed.py)."""
