"""The stages chained: evaluate a cache, compare the translators, the end-to-end demo."""
