"""The `lpips` metric: `evaluate.load(hf_vitvq.evaluate_metrics.metric_path("lpips"))` loads lpips.py."""
