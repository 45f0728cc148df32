"""Answer again without paying again: embedders, indexes and the semantic cache."""
