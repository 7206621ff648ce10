"""Synthetic-family generators ("styles"), the default ``faces`` included; ``kinship.synth`` names them.

Each module was written on its own and differs in kind, not only in parameters: how traits are drawn, how
they are inherited and which nuisances vary. Each exports ``STYLE``, a class implementing
``kinship.synth_style.Style``. The transfer benchmark (``benchmarks/transfer.py``) trains with the same
defaults on every style, so a recipe tuned to one renderer shows up as a loss on the others.
"""
