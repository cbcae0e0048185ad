"""Built-in benchmarks with ground truth: anatomy, scanner profiles, subjects, previews."""
