"""Synthetic datasets in the official layouts, with learnable signal (see :mod:`.phantom`)."""
