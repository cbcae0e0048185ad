"""Evaluation numbers to HTML, Markdown, JSON and CSV: tables, quality checks and figures."""
