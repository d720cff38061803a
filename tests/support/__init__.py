"""Helpers the tests share: fake weights and experiments, clips, trainables Ray runs."""
