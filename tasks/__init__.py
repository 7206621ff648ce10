"""Prefect tasks: thin wrappers over ``kinship`` (retries on I/O, caching on input hashes, progress artifacts).

Every task opens the artifact store from the environment (``KINSHIP_BUCKET``, ``AWS_*``) and works in
this host's scratch folder (``KINSHIP_SCRATCH``); what it returns names store objects, never a folder
another host would have to share.
"""
