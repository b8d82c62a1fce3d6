"""Integrations with other tools, each imported only by those who use it.

``import celery_saga`` imports none of these modules, so core depends on none of
the tools they integrate with.

- `celery_saga.contrib.django`: start a saga once the surrounding Django
  transaction commits (`run_on_commit`).
- `celery_saga.contrib.pytest`: pytest fixtures and assertions for testing sagas,
  off until enabled, like ``celery.contrib.pytest``.
"""
