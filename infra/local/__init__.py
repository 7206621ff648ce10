"""The one-machine stack: ``localstack.py``, run as a script by ``up`` and ``down``, imported by the tests."""
