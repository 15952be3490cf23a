"""The `psnr` metric: `evaluate.load(hf_vitvq.evaluate_metrics.metric_path("psnr"))` loads psnr.py."""
