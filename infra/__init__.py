"""Where kinship runs: the one-machine stack (``infra/local``) and the two-host setup (``infra/hosts``)."""
