"""Decoding in numpy over the decoder's top-K per step: beam search (plain and diverse), sampling,
and the default strategy (sampled candidates, the best distinct ones kept), with the caption
rules (box counts, no repeated box, near-duplicates, no training captions).

A search owns its rows (beams or samples) and their GRU states; a driver (the gateway's
scheduler, or `captioner.run_searches` offline) asks it for the next step's inputs, calls the
model once for many searches, and hands each its slice. Core code: the gateway and
`memefly evaluate` both use it, so evaluation measures what is served.
"""
