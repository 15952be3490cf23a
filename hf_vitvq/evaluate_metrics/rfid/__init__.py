"""The `rfid` metric: `evaluate.load(hf_vitvq.evaluate_metrics.metric_path("rfid"))` loads rfid.py."""
