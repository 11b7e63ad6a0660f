"""The subset masks and the store: the schema of its arrays, the checks every chunk
must pass, and the read-only view the fit and the evaluation work on. Reading and
writing store folders is the collect stage's (``dmflow.stages.collect``)."""
