"""The one-machine stack: ``localstack.py`` (the ``up``/``down`` CLI, run as a script by ``up`` and ``down``, imported
by the tests) and one module per service: ``processes.py``, ``seaweedfs.py``, ``postgres.py``, ``prefect_server.py``."""
