"""`tune-adapter bench`: measurements, kept out of the trainer and the search.

trainer: the training step's speed and memory against its floor and a naive trainer;
search: a whole search's overhead; asha: what pruning saves; quality: does the search beat
not searching; faults: searches killed and resumed.
"""
