"""Family search (RFIW Track 3): given all photos of one person, rank a gallery of faces by how likely each
shows a blood relative.

One module per concept: ``split`` (probes and gallery on held-out families), ``metrics`` (mAP, CMC Rank@k),
``scoring`` (the trained pair head over a whole gallery: exact, and the fast path that shortlists by a linear
surrogate of the head's first layer), ``index`` (sharded gallery embeddings in the store, rebuilt incrementally),
``eval`` (`kinship search-eval`: a model beside random and raw-pixel rankings on one split) and ``batch`` (a list
of probes against an index: the ranked CSV and, with labels, the metrics).
"""
