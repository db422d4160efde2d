"""Embedded tasks: corpora, prompts and ground-truth rewards that need nothing downloaded."""
