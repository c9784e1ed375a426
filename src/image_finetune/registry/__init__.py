"""The MLflow side of the pipeline, one module per job:

- :mod:`.client`: one MLflow client per process and tracking URI, failing fast when the
  server is down;
- :mod:`.tracking`: one parent run per pipeline run, nested runs per attempt, artifacts;
- :mod:`.versions`: registered versions, their stored test results, registration;
- :mod:`.promotion`: the ``champion``/``challenger`` aliases, the promotion lock, the
  promotion history and rollback;
- :mod:`.lineage`: what ties a version to its code, data and run.

Works with the embedded store (``sqlite:///mlflow.db``) and with a tracking server.
"""
