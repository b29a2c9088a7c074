"""Decoding over the decoder's top-K per step: beam search (plain and diverse), sampling,
and the default strategy (sampled candidates, the best distinct ones kept), with the caption
rules (box counts, no repeated box, near-duplicates, no training captions).

A search is one request's bookkeeping; its rows (beams or samples: caption so far, scores,
GRU state) live in a `SearchTable` (`rows.py`, struct of arrays) shared by every search a driver
steps. A driver (the gateway's scheduler, or `captioner.run_searches` offline) takes the next
step's inputs for many searches, calls the model once, and advances them all at once: the
caption rules, beam selection and sampling are compiled loops over [rows, K] (`kernels.py`,
numba); Python runs per finished caption, not per row. Core code: the
gateway and `memefly evaluate` both use it, so evaluation measures what is served.
"""
