"""The `codebook` metric: `evaluate.load(hf_vitvq.evaluate_metrics.metric_path("codebook"))` loads codebook.py."""
