"""The `ssim` metric: `evaluate.load(hf_vitvq.evaluate_metrics.metric_path("ssim"))` loads ssim.py."""
