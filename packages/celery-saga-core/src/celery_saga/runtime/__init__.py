"""How sagas run on Celery: dispatch, bookkeeping in the step's worker, replies."""
