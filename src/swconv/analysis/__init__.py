"""Analysis tools: sparsity report (``python -m swconv.analysis.sparsity``), plots."""
